//! How often the kernel skipped one of pincg's attached programs, read
//! through their pinned links (`recursion_misses` of each program).
//!
//! The kernel skips a fentry/fexit program when the same program is already
//! running on that CPU (a task preempted inside it, on a preemptible
//! kernel), and a kprobe program when it fires inside another BPF program.
//! A skipped charge or release hook is a pin the ledger missed, so the
//! agent exports the total next to the ledger's other anomalies.

use std::ffi::CString;
use std::fs;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use libbpf_rs::libbpf_sys;

use crate::paths::PinPaths;
use crate::Error;

/// The summed `recursion_misses` of every program pincg has attached.
pub fn recursion_misses(paths: &PinPaths) -> Result<u64, Error> {
    let dir = paths.links_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(Error::Io { path: dir, source }),
    };
    let mut total = 0;
    for entry in entries {
        let path = entry.map_err(|source| Error::Io { path: dir.clone(), source })?.path();
        // A link unpinned since the listing (a module went away) is skipped.
        if let Some(misses) = link_misses(&path).map_err(|source| Error::Io { path: path.clone(), source })? {
            total += misses;
        }
    }
    Ok(total)
}

/// The misses of the program behind the link pinned at `path`; `None` if
/// the pin is gone.
fn link_misses(path: &Path) -> std::io::Result<Option<u64>> {
    let name = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: a NUL-terminated path; the returned fd is owned below.
    let raw = unsafe { libbpf_sys::bpf_obj_get(name.as_ptr()) };
    if raw < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::NotFound { Ok(None) } else { Err(e) };
    }
    // SAFETY: bpf_obj_get returned a new fd that nothing else owns.
    let link = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: zeroed is a valid bpf_link_info; the kernel fills at most len bytes.
    let mut info: libbpf_sys::bpf_link_info = unsafe { zeroed() };
    let mut len = size_of::<libbpf_sys::bpf_link_info>() as u32;
    // SAFETY: info and len point to live, correctly sized values.
    check(unsafe { libbpf_sys::bpf_link_get_info_by_fd(link.as_raw_fd(), &mut info, &mut len) })?;
    // SAFETY: as for bpf_obj_get.
    let raw = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(info.prog_id) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    let prog = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: as above, for bpf_prog_info.
    let mut info: libbpf_sys::bpf_prog_info = unsafe { zeroed() };
    let mut len = size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info and len point to live, correctly sized values.
    check(unsafe { libbpf_sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &mut info, &mut len) })?;
    Ok(Some(info.recursion_misses))
}

/// libbpf's `-errno` convention as an io::Error.
fn check(rc: i32) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::from_raw_os_error(-rc))
    } else {
        Ok(())
    }
}
