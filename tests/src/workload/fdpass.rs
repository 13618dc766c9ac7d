//! Handing a pinning fd to another process over a unix socket (SCM_RIGHTS),
//! so scenarios can check that whoever closes it, the pinner's cgroup is
//! the one uncharged.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};

use super::os_error;

/// Send `fd` to the process listening at `path`.
pub fn send(path: &str, fd: RawFd) -> Result<(), String> {
    let stream = UnixStream::connect(path).map_err(|e| format!("connect {path}: {e}"))?;
    let payload = [0u8; 1];
    let iov = [IoSlice::new(&payload)];
    let mut control = [0u8; 64];
    // SAFETY: msghdr and cmsg are built in buffers we own, sized by CMSG_SPACE.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
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
    /// Handle `listen <path>`, `accept` and `drop-received`; `None` if
    /// `command` is not one of them.
    pub fn command(&mut self, command: &str, args: &[&str]) -> Option<Result<(), String>> {
        Some(match (command, args) {
            ("listen", [path]) => {
                let _ = std::fs::remove_file(path);
                UnixListener::bind(path).map(|l| self.listener = Some(l)).map_err(|e| format!("bind {path}: {e}"))
            }
            ("accept", []) => self.accept(),
            ("drop-received", []) => {
                self.held.clear();
                Ok(())
            }
            _ => return None,
        })
    }

    fn accept(&mut self) -> Result<(), String> {
        let listener = self.listener.as_ref().ok_or("send `listen <path>` first")?;
        let (stream, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        let mut payload = [0u8; 1];
        let mut iov = [IoSliceMut::new(&mut payload)];
        let mut control = [0u8; 64];
        // SAFETY: as in `send`; the received fd is owned by us from here on.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = iov.as_mut_ptr().cast();
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = control.len();
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
