//! io_uring registered buffers through the raw syscalls (the uAPI numbers
//! and structs of include/uapi/linux/io_uring.h), so every opcode can be
//! exercised whatever liburing version the machine has.

use std::os::fd::{FromRawFd, OwnedFd, AsRawFd};

use super::{anonymous_memory, os_error, parse_size};

const IORING_REGISTER_BUFFERS: u32 = 0;
const IORING_UNREGISTER_BUFFERS: u32 = 1;
const IORING_REGISTER_BUFFERS2: u32 = 15;
const IORING_REGISTER_BUFFERS_UPDATE: u32 = 16;
const IORING_REGISTER_CLONE_BUFFERS: u32 = 30;

#[repr(C)]
#[derive(Default)]
struct RsrcRegister {
    nr: u32,
    flags: u32,
    resv2: u64,
    data: u64,
    tags: u64,
}

#[repr(C)]
#[derive(Default)]
struct RsrcUpdate2 {
    offset: u32,
    resv: u32,
    data: u64,
    tags: u64,
    nr: u32,
    resv2: u32,
}

#[repr(C)]
#[derive(Default)]
struct CloneBuffers {
    src_fd: u32,
    flags: u32,
    pad: [u32; 6],
}

/// A process's rings: the first is the one buffers are registered on; a
/// second appears when buffers are cloned into it.
#[derive(Default)]
pub struct Rings {
    main: Option<OwnedFd>,
    clone: Option<OwnedFd>,
}

impl super::Pinner for Rings {
    fn pinning_fd(&self) -> Option<i32> {
        self.main.as_ref().map(|fd| fd.as_raw_fd())
    }

    fn command(&mut self, command: &str, args: &[&str]) -> Result<(), String> {
        match (command, args) {
            ("ring", []) => {
                self.main = Some(setup()?);
                Ok(())
            }
            ("register", [size]) => {
                let iov = [buffer(parse_size(size)?)?];
                register(self.main()?, IORING_REGISTER_BUFFERS, iov.as_ptr().cast(), 1)
            }
            ("register2", [sizes]) => self.register2(sizes),
            ("update-empty", [slot]) => {
                let empty = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
                let tag = 0u64;
                let update = RsrcUpdate2 {
                    offset: slot.parse().map_err(|_| format!("bad slot {slot:?}"))?,
                    data: &empty as *const _ as u64,
                    tags: &tag as *const _ as u64,
                    nr: 1,
                    ..RsrcUpdate2::default()
                };
                let size = std::mem::size_of::<RsrcUpdate2>() as u32;
                register(self.main()?, IORING_REGISTER_BUFFERS_UPDATE, (&update as *const RsrcUpdate2).cast(), size)
            }
            ("clone", []) => {
                let dst = setup()?;
                let clone = CloneBuffers { src_fd: self.main()? as u32, ..CloneBuffers::default() };
                register(dst.as_raw_fd(), IORING_REGISTER_CLONE_BUFFERS, (&clone as *const CloneBuffers).cast(), 1)?;
                self.clone = Some(dst);
                Ok(())
            }
            ("unregister", []) => register(self.main()?, IORING_UNREGISTER_BUFFERS, std::ptr::null(), 0),
            // `churn N SIZE`: register and unregister one buffer N times.
            ("churn", [n, size]) => {
                let n: u64 = n.parse().map_err(|_| format!("bad count {n:?}"))?;
                let iov = [buffer(parse_size(size)?)?];
                for _ in 0..n {
                    register(self.main()?, IORING_REGISTER_BUFFERS, iov.as_ptr().cast(), 1)?;
                    register(self.main()?, IORING_UNREGISTER_BUFFERS, std::ptr::null(), 0)?;
                }
                Ok(())
            }
            ("close", []) => {
                self.main = None;
                self.clone = None;
                Ok(())
            }
            _ => Err(format!("unknown io_uring command {command:?} {args:?}")),
        }
    }
}

impl Rings {

    /// `register2 16M,16M[,sparse]`: BUFFERS2 with a tag per buffer; the
    /// word `sparse` leaves an empty slot.
    fn register2(&self, sizes: &str) -> Result<(), String> {
        let mut iovs = Vec::new();
        for word in sizes.split(',') {
            iovs.push(match word {
                "sparse" => libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 },
                size => buffer(parse_size(size)?)?,
            });
        }
        // A tag on an empty slot is refused (EINVAL): empty slots get 0.
        let tags: Vec<u64> =
            iovs.iter().enumerate().map(|(i, v)| if v.iov_base.is_null() { 0 } else { i as u64 + 1 }).collect();
        let reg = RsrcRegister {
            nr: iovs.len() as u32,
            data: iovs.as_ptr() as u64,
            tags: tags.as_ptr() as u64,
            ..RsrcRegister::default()
        };
        let size = std::mem::size_of::<RsrcRegister>() as u32;
        register(self.main()?, IORING_REGISTER_BUFFERS2, (&reg as *const RsrcRegister).cast(), size)
    }

    fn main(&self) -> Result<i32, String> {
        self.main.as_ref().map(|fd| fd.as_raw_fd()).ok_or_else(|| "no ring: send `ring` first".into())
    }
}

fn buffer(bytes: usize) -> Result<libc::iovec, String> {
    Ok(libc::iovec { iov_base: anonymous_memory(bytes)?, iov_len: bytes })
}

fn setup() -> Result<OwnedFd, String> {
    let mut params = [0u8; 120]; // struct io_uring_params, zeroed
    // SAFETY: io_uring_setup reads and writes the params struct we own.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 8u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(os_error("io_uring_setup"));
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn register(fd: i32, opcode: u32, arg: *const libc::c_void, nr_args: u32) -> Result<(), String> {
    // SAFETY: `arg` points to a live, correctly laid out argument for `opcode`.
    let rc = unsafe { libc::syscall(libc::SYS_io_uring_register, fd, opcode, arg, nr_args) };
    if rc < 0 {
        Err(os_error(&format!("io_uring_register opcode {opcode}")))
    } else {
        Ok(())
    }
}
