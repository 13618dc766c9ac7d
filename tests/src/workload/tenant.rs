//! What a hostile tenant does after pinning, to escape its cgroup's charge:
//! fork a child that pins more, pin from several threads, exec another
//! program that keeps the pinning fds. The io_uring workload exposes them
//! as commands (`fork`, `reap`, `threads`, `exec`).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::os_error;

/// A forked child holding its own pins until it is reaped.
pub struct Forked {
    pid: libc::pid_t,
    /// Closing it tells the child to exit.
    release: OwnedFd,
}

impl Forked {
    /// Fork; the child runs `pin` (keeping what it returns), reports
    /// whether it worked, then waits for [`Forked::reap`]. Returns once the
    /// child's pins are in place.
    pub fn spawn<T>(pin: impl FnOnce() -> Result<T, String>) -> Result<Forked, String> {
        let (ready_read, ready_write) = pipe()?;
        let (release_read, release_write) = pipe()?;
        // SAFETY: the workload is single-threaded here (threads of the
        // `threads` command are joined), so the child may run Rust code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(os_error("fork"));
        }
        if pid == 0 {
            drop((ready_read, release_write));
            let held = pin();
            let status = [u8::from(held.is_ok())];
            let mut byte = [0u8];
            // SAFETY: plain reads and writes on pipes this child owns; it
            // leaves with _exit, running no parent-owned destructors.
            unsafe {
                libc::write(ready_write.as_raw_fd(), status.as_ptr().cast(), 1);
                libc::read(release_read.as_raw_fd(), byte.as_mut_ptr().cast(), 1);
                libc::_exit(0);
            }
        }
        drop((ready_write, release_read));
        let mut status = [0u8];
        // SAFETY: reads one byte into a buffer we own.
        let n = unsafe { libc::read(ready_read.as_raw_fd(), status.as_mut_ptr().cast(), 1) };
        let forked = Forked { pid, release: release_write };
        if n != 1 || status[0] != 1 {
            forked.reap()?;
            return Err("the forked child could not pin".into());
        }
        Ok(forked)
    }

    /// Tell the child to exit and wait for it.
    pub fn reap(self) -> Result<(), String> {
        drop(self.release);
        let mut status = 0;
        // SAFETY: waits for our own child.
        if unsafe { libc::waitpid(self.pid, &mut status, 0) } != self.pid {
            return Err(os_error("waitpid"));
        }
        Ok(())
    }
}

/// Run `pin` on `n` threads at once; every thread's result, in order.
pub fn in_threads<T: Send>(n: usize, pin: impl Fn() -> Result<T, String> + Sync) -> Result<Vec<T>, String> {
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..n).map(|_| s.spawn(&pin)).collect();
        threads.into_iter().map(|t| t.join().map_err(|_| "a pinning thread panicked".to_string())?).collect()
    })
}

/// Keep `fds` open across exec (clear FD_CLOEXEC), then exec `argv`. Only
/// returns on failure.
pub fn exec(fds: &[RawFd], argv: &[&str]) -> String {
    for fd in fds {
        // SAFETY: fcntl on descriptors this process owns.
        if unsafe { libc::fcntl(*fd, libc::F_SETFD, 0) } != 0 {
            return os_error("fcntl(F_SETFD)");
        }
    }
    let Ok(args) = argv.iter().map(|a| CString::new(*a)).collect::<Result<Vec<_>, _>>() else {
        return "exec: an argument holds a NUL byte".into();
    };
    let Some(program) = args.first() else { return "exec: no program".into() };
    let mut pointers: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    pointers.push(std::ptr::null());
    // SAFETY: NUL-terminated strings and a NULL-terminated array, alive
    // for the call.
    unsafe { libc::execvp(program.as_ptr(), pointers.as_ptr()) };
    os_error(&format!("exec {}", argv[0]))
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_error("pipe2"));
    }
    // SAFETY: the kernel just returned these descriptors to us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
