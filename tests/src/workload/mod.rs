//! Pinning workloads driven line by line over stdin, so a scenario can
//! assert the ledger after every step. Each command answers one line on
//! stdout: `ok`, or `err <what failed>: <errno text>`.

pub mod fdpass;
pub mod io_uring;
pub mod rdma;
pub mod vfio;
pub mod xdp;

use std::io::{BufRead, Write};

/// Parse a size such as `64M`, `16M`, `4K` or `4096`.
pub fn parse_size(text: &str) -> Result<usize, String> {
    match pincg_cgroup_spec::parse_limit(text) {
        Ok(pincg_cgroup_spec::Limit::Bytes(b)) => usize::try_from(b).map_err(|e| e.to_string()),
        Ok(pincg_cgroup_spec::Limit::Max) => Err("a size must be a number of bytes".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A pinning workload: its own commands, and the fd that holds its pins
/// (what `send <path>` hands to another process).
pub trait Pinner {
    fn command(&mut self, command: &str, args: &[&str]) -> Result<(), String>;
    fn pinning_fd(&self) -> Option<std::os::fd::RawFd>;
}

/// Read commands until stdin closes or `exit`; run each on `pinner`. Every
/// workload also understands `send <path>` (hand the pinning fd over),
/// `listen <path>`, `accept` and `drop-received` (take one, hold it, drop it).
pub fn serve(pinner: &mut dyn Pinner) {
    let mut receiver = fdpass::Receiver::default();
    let mut handle = |command: &str, args: &[&str]| match (command, args) {
        ("send", [path]) => fdpass::send(path, pinner.pinning_fd().ok_or("nothing to send yet")?),
        _ => receiver.command(command, args).unwrap_or_else(|| pinner.command(command, args)),
    };
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((command, args)) = words.split_first() else { continue };
        if *command == "exit" {
            // Leave without releasing anything: the kernel's teardown must.
            std::process::exit(0);
        }
        let reply = match handle(command, args) {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("err {e}"),
        };
        let _ = writeln!(stdout, "{reply}");
        let _ = stdout.flush();
    }
}

/// The last OS error, named after the call that failed.
pub fn os_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Anonymous, populated memory that lives as long as the process, in small
/// pages: with transparent huge pages the kernel keeps one pin reference per
/// huge folio (io_uring coalesces), and the scenarios' cross-check against
/// `/proc/vmstat` counts pin references.
pub fn anonymous_memory(bytes: usize) -> Result<*mut libc::c_void, String> {
    // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(os_error("mmap"));
    }
    // SAFETY: advice on the mapping just created.
    if unsafe { libc::madvise(ptr, bytes, libc::MADV_NOHUGEPAGE) } != 0 {
        return Err(os_error("madvise(MADV_NOHUGEPAGE)"));
    }
    Ok(ptr)
}
