//! AF_XDP umem registration (setsockopt SOL_XDP/XDP_UMEM_REG), per
//! include/uapi/linux/if_xdp.h.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{anonymous_memory, os_error, parse_size};

const AF_XDP: i32 = 44;
const SOL_XDP: i32 = 283;
const XDP_UMEM_REG: i32 = 4;

/// `struct xdp_umem_reg` (the 6.8+ layout; older kernels read a prefix).
#[repr(C)]
struct UmemReg {
    addr: u64,
    len: u64,
    chunk_size: u32,
    headroom: u32,
    flags: u32,
    tx_metadata_len: u32,
}

/// One AF_XDP socket.
#[derive(Default)]
pub struct Xdp {
    socket: Option<OwnedFd>,
}

impl super::Pinner for Xdp {
    fn pinning_fd(&self) -> Option<i32> {
        self.socket.as_ref().map(|fd| fd.as_raw_fd())
    }

    fn command(&mut self, command: &str, args: &[&str]) -> Result<(), String> {
        match (command, args) {
            ("socket", []) => {
                // SAFETY: plain socket(2).
                let fd = unsafe { libc::socket(AF_XDP, libc::SOCK_RAW, 0) };
                if fd < 0 {
                    return Err(os_error("socket(AF_XDP)"));
                }
                // SAFETY: the kernel just returned this descriptor to us.
                self.socket = Some(unsafe { OwnedFd::from_raw_fd(fd) });
                Ok(())
            }
            ("umem", [size]) => {
                let len = parse_size(size)?;
                self.register(anonymous_memory(len)?, len)
            }
            // `claim <size> <rounds> <report>`: see `super::time_claim`.
            ("claim", args) => super::time_claim(args, |range, len| self.register(range, len)),
            ("close", []) => {
                self.socket = None;
                Ok(())
            }
            _ => Err(format!("unknown xdp command {command:?} {args:?}")),
        }
    }
}

impl Xdp {
    /// XDP_UMEM_REG of `len` bytes at `addr`.
    fn register(&self, addr: *mut libc::c_void, len: usize) -> Result<(), String> {
        let reg =
            UmemReg { addr: addr as u64, len: len as u64, chunk_size: 4096, headroom: 0, flags: 0, tx_metadata_len: 0 };
        let fd = self.socket.as_ref().ok_or("no socket: send `socket` first")?.as_raw_fd();
        // SAFETY: `reg` is a live, correctly laid out xdp_umem_reg.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                SOL_XDP,
                XDP_UMEM_REG,
                (&reg as *const UmemReg).cast(),
                std::mem::size_of::<UmemReg>() as u32,
            )
        };
        if rc < 0 {
            return Err(os_error("setsockopt(XDP_UMEM_REG)"));
        }
        Ok(())
    }
}
