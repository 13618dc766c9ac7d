//! What the kernel says of each program pincg has attached, read through
//! their pinned links: how often it skipped the program, how often its
//! probe missed a hit, and how many instructions its verifier processed to
//! accept it.
//!
//! The kernel skips a fentry/fexit program when the same program is already
//! running on that CPU (a task preempted inside it, on a preemptible
//! kernel), and a kprobe program when it fires inside another BPF program.
//! A kretprobe misses a return when more tasks are inside its function at
//! once than it has instances (`maxactive`: the kernel's default, at least
//! 10 and twice the CPUs, for the perf kprobes libbpf makes). A skipped or
//! missed charge or release hook is a pin the ledger missed, so the agent
//! exports both totals next to the ledger's other anomalies.
//!
//! The verified instructions are checked against a budget per kernel by
//! the `verifier-budget` guest scenario: the verifier refuses a program at
//! 1,000,000, and a program that drifts toward that is caught early.

use std::ffi::CString;
use std::fs;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use libbpf_rs::libbpf_sys;

use crate::paths::PinPaths;
use crate::Error;

/// One attached program, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStats {
    /// The program's function name (its link's pin name without the
    /// `@<module instance>` suffix): the kernel's own name is cut at 15
    /// bytes.
    pub program: String,
    /// `bpf_prog_info.recursion_misses`.
    pub recursion_misses: u64,
    /// The link's probe misses (`bpf_link_info` of a kprobe or kretprobe
    /// perf link, kernel 6.7+): hits the probe itself dropped. 0 for other
    /// links and older kernels.
    pub probe_misses: u64,
    /// `bpf_prog_info.verified_insns`: instructions the verifier processed
    /// (the count its 1,000,000 limit applies to); 0 before kernel 5.16.
    pub verified_insns: u32,
}

/// The summed `recursion_misses` and `probe_misses` of every program pincg
/// has attached.
pub fn misses(paths: &PinPaths) -> Result<(u64, u64), Error> {
    let programs = programs(paths)?;
    Ok((programs.iter().map(|p| p.recursion_misses).sum(), programs.iter().map(|p| p.probe_misses).sum()))
}

/// Every program pincg has attached (one per pinned link), sorted by name.
pub fn programs(paths: &PinPaths) -> Result<Vec<ProgramStats>, Error> {
    let dir = paths.links_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::Io { path: dir, source }),
    };
    let mut programs = Vec::new();
    for entry in entries {
        let path = entry.map_err(|source| Error::Io { path: dir.clone(), source })?.path();
        // A link unpinned since the listing (a module went away) is skipped.
        if let Some((link, info)) = link_prog_info(&path).map_err(|source| Error::Io { path: path.clone(), source })? {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            programs.push(ProgramStats {
                program: program_of_link(&name).to_string(),
                recursion_misses: info.recursion_misses,
                probe_misses: probe_misses(&link),
                verified_insns: info.verified_insns,
            });
        }
    }
    programs.sort_by(|a, b| a.program.cmp(&b.program));
    Ok(programs)
}

/// The program of a link pinned as `<program>` or `<program>@<instance>`.
fn program_of_link(name: &str) -> &str {
    name.split_once('@').map_or(name, |(program, _)| program)
}

/// What a kprobe or kretprobe perf link says its probe missed.
fn probe_misses(link: &libbpf_sys::bpf_link_info) -> u64 {
    if link.type_ != libbpf_sys::BPF_LINK_TYPE_PERF_EVENT {
        return 0;
    }
    // SAFETY: the kernel filled the perf_event member for a perf link.
    let event = unsafe { link.__bindgen_anon_1.perf_event };
    if event.type_ != libbpf_sys::BPF_PERF_EVENT_KPROBE && event.type_ != libbpf_sys::BPF_PERF_EVENT_KRETPROBE {
        return 0;
    }
    // SAFETY: the kprobe member, for a kprobe or kretprobe event.
    unsafe { event.__bindgen_anon_1.kprobe.missed }
}

/// The info of the link pinned at `path` and of its program; `None` if
/// the pin is gone.
fn link_prog_info(path: &Path) -> std::io::Result<Option<(libbpf_sys::bpf_link_info, libbpf_sys::bpf_prog_info)>> {
    let name = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: a NUL-terminated path; the returned fd is owned below.
    let raw = unsafe { libbpf_sys::bpf_obj_get(name.as_ptr()) };
    if raw < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::NotFound { Ok(None) } else { Err(e) };
    }
    // SAFETY: bpf_obj_get returned a new fd that nothing else owns.
    let link = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: zeroed is a valid bpf_link_info (no name buffers: the kernel
    // then fills the counters only); the kernel fills at most len bytes.
    let mut link_info: libbpf_sys::bpf_link_info = unsafe { zeroed() };
    let mut len = size_of::<libbpf_sys::bpf_link_info>() as u32;
    // SAFETY: info and len point to live, correctly sized values.
    check(unsafe { libbpf_sys::bpf_link_get_info_by_fd(link.as_raw_fd(), &mut link_info, &mut len) })?;
    // SAFETY: as for bpf_obj_get.
    let raw = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(link_info.prog_id) };
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
    Ok(Some((link_info, info)))
}

/// libbpf's `-errno` convention as an io::Error.
fn check(rc: i32) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::from_raw_os_error(-rc))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_links_instance_is_not_part_of_the_program() {
        assert_eq!(program_of_link("vfio_pin_v61@4711"), "vfio_pin_v61");
        assert_eq!(program_of_link("enforce_file_ioctl"), "enforce_file_ioctl");
    }

    #[test]
    fn no_links_directory_is_no_programs() {
        let paths = PinPaths::new("/nonexistent/pincg-prog-stats", "/sys/fs/cgroup");
        assert_eq!(programs(&paths).unwrap(), Vec::new());
        assert_eq!(misses(&paths).unwrap(), (0, 0));
    }
}
