//! Pinning workloads driven line by line over stdin, so a scenario can
//! assert the ledger after every step. Each command answers one line on
//! stdout: `ok`, or `err <what failed>: <errno text>`.

pub mod fdpass;
pub mod io_uring;
pub mod iommufd;
pub mod rdma;
pub mod tenant;
pub mod vduse;
pub mod vfio;
pub mod vm;
pub mod xdp;

use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;

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

/// Parse an I/O virtual address, hex (`0x100000`) or decimal.
pub fn parse_iova(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("bad iova {text:?}"))
}

/// ioctl(2) on `fd`; the error names the request.
pub fn ioctl(fd: &OwnedFd, request: libc::c_ulong, arg: libc::c_ulong, name: &str) -> Result<libc::c_int, String> {
    // SAFETY: every caller passes, for its `request`, either a plain value
    // or the address of a live, correctly laid out uAPI struct.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg) };
    if rc < 0 {
        Err(os_error(name))
    } else {
        Ok(rc)
    }
}

/// Raise RLIMIT_MEMLOCK to unlimited, then become `uid` (and gid `uid`)
/// without capabilities, so the kernel's own accounting runs as it does for
/// an unprivileged tenant.
pub fn drop_privileges(uid: u32) -> Result<(), String> {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscalls on our own process with valid arguments.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) != 0 {
            return Err(os_error("setrlimit(RLIMIT_MEMLOCK)"));
        }
        if libc::setgid(uid) != 0 {
            return Err(os_error("setgid"));
        }
        if libc::setuid(uid) != 0 {
            return Err(os_error("setuid"));
        }
    }
    Ok(())
}

/// Set RLIMIT_MEMLOCK, soft and hard, to `bytes`. Lowering needs no
/// privilege, so this works after `--user` dropped them.
pub fn memlock(bytes: usize) -> Result<(), String> {
    let limit = libc::rlimit { rlim_cur: bytes as libc::rlim_t, rlim_max: bytes as libc::rlim_t };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        return Err(os_error("setrlimit(RLIMIT_MEMLOCK)"));
    }
    Ok(())
}

/// An address range of `bytes` that nothing backs (PROT_NONE, reserving
/// nothing): a request claiming it fails at its first page in the kernel.
pub fn unbacked_range(bytes: usize) -> Result<*mut libc::c_void, String> {
    // SAFETY: a fresh inaccessible mapping; no existing memory is touched.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(os_error("mmap(PROT_NONE)"));
    }
    Ok(ptr)
}

/// `claim <size> <rounds> <report>`: request pinning `size` bytes of an
/// unbacked range (which must fail) `rounds` times and write
/// `min_ns N error E` to `report`: the fastest attempt (the least disturbed
/// by the rest of the guest) and how the last one failed.
pub fn time_claim(
    args: &[&str],
    mut request: impl FnMut(*mut libc::c_void, usize) -> Result<(), String>,
) -> Result<(), String> {
    let [size, rounds, report] = args else {
        return Err(format!("claim needs <size> <rounds> <report>, got {args:?}"));
    };
    let (size, rounds) = (parse_size(size)?, rounds.parse::<u32>().map_err(|_| format!("bad count {rounds:?}"))?);
    let range = unbacked_range(size)?;
    let (mut fastest, mut error) = (u128::MAX, String::new());
    for _ in 0..rounds {
        let start = std::time::Instant::now();
        let outcome = request(range, size);
        fastest = fastest.min(start.elapsed().as_nanos());
        error = outcome.err().ok_or("a claim succeeded")?;
    }
    // SAFETY: the range mapped above; nothing pinned it.
    unsafe { libc::munmap(range, size) };
    std::fs::write(report, format!("min_ns {fastest} error {error}\n")).map_err(|e| format!("{report}: {e}"))
}

/// Open a device node for reading and writing.
pub fn open(path: &str) -> Result<OwnedFd, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| format!("open {path}: {e}"))
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

/// Populated anonymous memory of `bytes`, one mapping per size: made on the
/// first call for that size and handed out again on every later one, so a
/// loop (the `*-reuse` commands, the bench scenario) pins and unpins the
/// same, already faulted-in pages rather than a fresh mapping per call.
/// Small pages, like [`anonymous_memory`]; never unmapped.
pub fn reusable_memory(bytes: usize) -> Result<*mut libc::c_void, String> {
    static MAPPINGS: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());
    let mut mappings = MAPPINGS.lock().map_err(|_| "reusable memory: lock poisoned".to_string())?;
    if let Some(&(_, addr)) = mappings.iter().find(|(size, _)| *size == bytes) {
        return Ok(addr as *mut libc::c_void);
    }
    let ptr = anonymous_memory(bytes)?;
    // SAFETY: the mapping was just created, writable and `bytes` long.
    unsafe { std::ptr::write_bytes(ptr.cast::<u8>(), 0, bytes) };
    mappings.push((bytes, ptr as usize));
    Ok(ptr)
}
