//! Handing a pinning fd to another process, so scenarios can check that
//! whoever closes it, the pinner's cgroup is the one uncharged: over a unix
//! socket (SCM_RIGHTS), or taken with pidfd_getfd(2) for io_uring fds, which
//! the kernel refuses to send over sockets.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};

use super::os_error;

/// Control-message space for one fd, aligned as `struct cmsghdr` needs.
#[repr(C, align(8))]
struct Control([u8; 64]);

/// Send `fd` to the process listening at `path`.
pub fn send(path: &str, fd: RawFd) -> Result<(), String> {
    let stream = UnixStream::connect(path).map_err(|e| format!("connect {path}: {e}"))?;
    let payload = [0u8; 1];
    let iov = [IoSlice::new(&payload)];
    let mut control = Control([0; 64]);
    // SAFETY: msghdr and cmsg are built in buffers we own, sized by CMSG_SPACE.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        if libc::sendmsg(stream.as_raw_fd(), &msg, 0) < 0 {
            return Err(os_error("sendmsg(SCM_RIGHTS)"));
        }
    }
    Ok(())
}

/// The receiving end: listen, accept one fd at a time, hold what arrived.
#[derive(Default)]
pub struct Receiver {
    listener: Option<UnixListener>,
    held: Vec<OwnedFd>,
}

impl Receiver {
    /// Handle `listen <path>`, `accept`, `grab <pid> <fd link>` and
    /// `drop-received`; `None` if `command` is not one of them.
    pub fn command(&mut self, command: &str, args: &[&str]) -> Option<Result<(), String>> {
        Some(match (command, args) {
            ("listen", [path]) => {
                let _ = std::fs::remove_file(path);
                UnixListener::bind(path).map(|l| self.listener = Some(l)).map_err(|e| format!("bind {path}: {e}"))
            }
            ("accept", []) => self.accept(),
            ("grab", [pid, link]) => self.grab(pid, link),
            ("drop-received", []) => {
                self.held.clear();
                Ok(())
            }
            _ => return None,
        })
    }

    /// Take a copy of process `pid`'s fd whose /proc link is `link` (e.g.
    /// `anon_inode:[io_uring]`).
    fn grab(&mut self, pid: &str, link: &str) -> Result<(), String> {
        let pid: i32 = pid.parse().map_err(|_| format!("bad pid {pid:?}"))?;
        let dir = format!("/proc/{pid}/fd");
        let target = std::fs::read_dir(&dir)
            .map_err(|e| format!("{dir}: {e}"))?
            .flatten()
            .find(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == link))
            .and_then(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
            .ok_or_else(|| format!("process {pid} has no fd open on {link}"))?;
        // SAFETY: plain syscalls; the returned fds are owned by us.
        unsafe {
            let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
            if pidfd < 0 {
                return Err(os_error("pidfd_open"));
            }
            let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
            let fd = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0);
            if fd < 0 {
                return Err(os_error("pidfd_getfd"));
            }
            self.held.push(OwnedFd::from_raw_fd(fd as i32));
        }
        Ok(())
    }

    fn accept(&mut self) -> Result<(), String> {
        let listener = self.listener.as_ref().ok_or("send `listen <path>` first")?;
        let (stream, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        let mut payload = [0u8; 1];
        let mut iov = [IoSliceMut::new(&mut payload)];
        let mut control = Control([0; 64]);
        // SAFETY: as in `send`; the received fd is owned by us from here on.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = iov.as_mut_ptr().cast();
            msg.msg_iovlen = 1;
            msg.msg_control = control.0.as_mut_ptr().cast();
            msg.msg_controllen = control.0.len();
            if libc::recvmsg(stream.as_raw_fd(), &mut msg, 0) < 0 {
                return Err(os_error("recvmsg(SCM_RIGHTS)"));
            }
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
                return Err("no fd arrived".into());
            }
            let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
            self.held.push(OwnedFd::from_raw_fd(fd));
        }
        Ok(())
    }
}
