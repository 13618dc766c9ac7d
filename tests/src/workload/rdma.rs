//! RDMA memory regions through libibverbs: `ibv_reg_mr` on anonymous memory,
//! which the kernel pins long-term in `ib_umem_get` (ib_uverbs) and charges
//! to `mm->pinned_vm` (VmPin), for root too.
//!
//! Commands:
//! - `open [DEVICE]`: open DEVICE (default: the first one) and allocate a PD.
//! - `reg SIZE`: register SIZE bytes of fresh anonymous memory with local
//!   write, remote write and remote read access.
//! - `reg-reuse SIZE`: the same with this process's reusable memory of SIZE
//!   (`super::reusable_memory`: allocated once, then the same pages every
//!   time), for reg/dereg loops.
//! - `reg-odp SIZE`: the same with `IBV_ACCESS_ON_DEMAND` (no pins); a device
//!   without ODP support answers `err` with the errno text. rdma_rxe on
//!   Debian's kernels: 6.1 EINVAL, 6.12 EOPNOTSUPP, 7.2 supported.
//! - `dereg INDEX`: deregister the INDEX-th successful registration (0-based,
//!   in registration order; indexes never shift).
//! - `claim SIZE ROUNDS REPORT`: `super::time_claim` with `ibv_reg_mr`.
//! - `close`: deregister everything left, free the PD and close the device.
//! - `padded PATH`: open the uverbs device node PATH and send it an
//!   INVOKE_WRITE ioctl with more attributes than pincg's refusal point
//!   reads (all unknown, none mandatory): the kernel answers its own error,
//!   a limited cgroup under pincg ENOMEM.
//!
//! libibverbs is linked, so the binary needs libibverbs.so.1 to start, but
//! nothing touches RDMA until `open`: on a machine without a device only
//! `open` fails.

use std::ffi::CStr;

use libc::{c_char, c_int, c_void};

use super::{anonymous_memory, os_error, parse_size, reusable_memory};

// enum ibv_access_flags in <infiniband/verbs.h>.
const IBV_ACCESS_LOCAL_WRITE: c_int = 1;
const IBV_ACCESS_REMOTE_WRITE: c_int = 1 << 1;
const IBV_ACCESS_REMOTE_READ: c_int = 1 << 2;
const IBV_ACCESS_ON_DEMAND: c_int = 1 << 6;

/// The access every registration asks for; `reg-odp` adds ON_DEMAND.
const ACCESS: c_int = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;

// libibverbs objects, only ever handled by pointer.
#[repr(C)]
struct IbvDevice {
    _opaque: [u8; 0],
}
#[repr(C)]
struct IbvContext {
    _opaque: [u8; 0],
}
#[repr(C)]
struct IbvPd {
    _opaque: [u8; 0],
}
#[repr(C)]
struct IbvMr {
    _opaque: [u8; 0],
}

// Each of these is an exported function of libibverbs.so.1 (`nm -D`); the
// linker binds the default symbol version (IBVERBS_1.1), as a C program does.
#[link(name = "ibverbs")]
extern "C" {
    fn ibv_get_device_list(num_devices: *mut c_int) -> *mut *mut IbvDevice;
    fn ibv_free_device_list(list: *mut *mut IbvDevice);
    fn ibv_get_device_name(device: *mut IbvDevice) -> *const c_char;
    fn ibv_open_device(device: *mut IbvDevice) -> *mut IbvContext;
    fn ibv_close_device(context: *mut IbvContext) -> c_int;
    fn ibv_alloc_pd(context: *mut IbvContext) -> *mut IbvPd;
    fn ibv_dealloc_pd(pd: *mut IbvPd) -> c_int;
    // Since rdma-core v29, verbs.h also defines an `ibv_reg_mr` macro: it calls
    // this same exported function unless the access flags hold a bit of
    // IBV_ACCESS_OPTIONAL_RANGE (relaxed ordering and the like), in which case
    // it calls `ibv_reg_mr_iova2`. Our flags never hold one, so this symbol is
    // exactly what a C program compiled against the header would call.
    fn ibv_reg_mr(pd: *mut IbvPd, addr: *mut c_void, length: usize, access: c_int) -> *mut IbvMr;
    fn ibv_dereg_mr(mr: *mut IbvMr) -> c_int;
}

/// The names of the RDMA devices libibverbs can use: a kernel device for
/// which no userspace provider (/etc/libibverbs.d) matched is not listed.
pub fn device_names() -> Result<Vec<String>, String> {
    with_devices(|devices| Ok(devices.iter().map(|&device| name(device)).collect()))
}

/// Run `f` on the device list, freeing the list afterwards.
fn with_devices<T>(f: impl FnOnce(&[*mut IbvDevice]) -> Result<T, String>) -> Result<T, String> {
    let mut count: c_int = 0;
    // SAFETY: `count` is a valid out pointer; the list is freed below.
    let list = unsafe { ibv_get_device_list(&mut count) };
    if list.is_null() {
        return Err(os_error("ibv_get_device_list"));
    }
    // SAFETY: the list holds `count` device pointers (and a NULL after them).
    let devices = unsafe { std::slice::from_raw_parts(list, count.max(0) as usize) };
    let result = f(devices);
    // SAFETY: `list` came from ibv_get_device_list and is freed once. Opened
    // contexts stay valid after the list is freed.
    unsafe { ibv_free_device_list(list) };
    result
}

fn name(device: *mut IbvDevice) -> String {
    // SAFETY: a device from a live list has a NUL-terminated name.
    unsafe { CStr::from_ptr(ibv_get_device_name(device)) }.to_string_lossy().into_owned()
}

/// `RDMA_VERBS_IOCTL` with a header (object DEVICE, method INVOKE_WRITE)
/// and 17 attributes of unknown ids, which the kernel ignores: a command
/// could hide behind them.
fn padded_invoke_write(path: &str) -> Result<(), String> {
    const RDMA_VERBS_IOCTL: libc::c_ulong = 0xc018_1b01;
    const ATTRS: usize = 17;
    let fd = super::open(path)?;
    // struct ib_uverbs_ioctl_hdr (24 bytes), then struct ib_uverbs_attr (16 each).
    let length = 24 + ATTRS * 16;
    let mut buf = vec![0u8; length];
    buf[0..2].copy_from_slice(&(length as u16).to_ne_bytes());
    buf[6..8].copy_from_slice(&(ATTRS as u16).to_ne_bytes());
    for i in 0..ATTRS {
        let attr_id = 0x1000u16 + i as u16;
        buf[24 + i * 16..24 + i * 16 + 2].copy_from_slice(&attr_id.to_ne_bytes());
    }
    super::ioctl(&fd, RDMA_VERBS_IOCTL, buf.as_ptr() as libc::c_ulong, "RDMA_VERBS_IOCTL").map(|_| ())
}

/// The error of a verb that returns an errno value rather than setting errno.
fn errno_error(what: &str, errno: c_int) -> String {
    format!("{what}: {}", std::io::Error::from_raw_os_error(errno))
}

/// An opened device, its protection domain and its memory regions.
struct Device {
    context: *mut IbvContext,
    pd: *mut IbvPd,
    /// Every successful registration in order; `None` once deregistered.
    mrs: Vec<Option<*mut IbvMr>>,
}

impl Device {
    fn open(wanted: Option<&str>) -> Result<Device, String> {
        let context = with_devices(|devices| {
            let device = match wanted {
                None => devices.first().copied().ok_or("no RDMA device")?,
                Some(wanted) => devices
                    .iter()
                    .copied()
                    .find(|&device| name(device) == wanted)
                    .ok_or_else(|| format!("no RDMA device {wanted:?}"))?,
            };
            // SAFETY: `device` comes from the live list.
            let context = unsafe { ibv_open_device(device) };
            if context.is_null() {
                return Err(os_error(&format!("ibv_open_device {}", name(device))));
            }
            Ok(context)
        })?;
        // SAFETY: `context` is an open device context.
        let pd = unsafe { ibv_alloc_pd(context) };
        if pd.is_null() {
            let error = os_error("ibv_alloc_pd");
            // SAFETY: the context is open and owns nothing yet.
            unsafe { ibv_close_device(context) };
            return Err(error);
        }
        Ok(Device { context, pd, mrs: Vec::new() })
    }

    /// Register `bytes` at `addr`, memory that is never unmapped.
    fn reg(&mut self, addr: *mut c_void, bytes: usize, access: c_int) -> Result<(), String> {
        // SAFETY: `addr` is a live mapping of `bytes` bytes that is never
        // unmapped; `self.pd` is an allocated PD.
        let mr = unsafe { ibv_reg_mr(self.pd, addr, bytes, access) };
        if mr.is_null() {
            return Err(os_error("ibv_reg_mr"));
        }
        self.mrs.push(Some(mr));
        Ok(())
    }

    fn dereg(&mut self, index: usize) -> Result<(), String> {
        let slot = self.mrs.get_mut(index).ok_or_else(|| format!("no memory region {index}"))?;
        let mr = slot.ok_or_else(|| format!("memory region {index} is already deregistered"))?;
        // SAFETY: `mr` is a registered MR, deregistered only here.
        let rc = unsafe { ibv_dereg_mr(mr) };
        if rc != 0 {
            return Err(errno_error("ibv_dereg_mr", rc));
        }
        *slot = None;
        Ok(())
    }
}

/// The workload's RDMA state: at most one opened device.
#[derive(Default)]
pub struct Rdma {
    device: Option<Device>,
}

impl Rdma {
    /// Run one workload command.
    pub fn command(&mut self, command: &str, args: &[&str]) -> Result<(), String> {
        match (command, args) {
            ("open", [] | [_]) => {
                if self.device.is_some() {
                    return Err("a device is already open: send `close` first".into());
                }
                self.device = Some(Device::open(args.first().copied())?);
                Ok(())
            }
            ("reg", [size]) => {
                let bytes = parse_size(size)?;
                self.device()?.reg(anonymous_memory(bytes)?, bytes, ACCESS)
            }
            ("reg-reuse", [size]) => {
                let bytes = parse_size(size)?;
                self.device()?.reg(reusable_memory(bytes)?, bytes, ACCESS)
            }
            ("reg-odp", [size]) => {
                let bytes = parse_size(size)?;
                self.device()?.reg(anonymous_memory(bytes)?, bytes, ACCESS | IBV_ACCESS_ON_DEMAND)
            }
            ("dereg", [index]) => {
                let index = index.parse().map_err(|_| format!("bad index {index:?}"))?;
                self.device()?.dereg(index)
            }
            ("claim", args) => {
                let device = self.device()?;
                super::time_claim(args, |range, size| device.reg(range, size, ACCESS))
            }
            ("close", []) => self.close(),
            ("padded", [path]) => padded_invoke_write(path),
            _ => Err(format!("unknown rdma command {command:?} {args:?}")),
        }
    }

    /// Deregister what is left, free the PD, close the device. A failure
    /// leaves what was not yet released in place.
    fn close(&mut self) -> Result<(), String> {
        let device = self.device()?;
        for index in 0..device.mrs.len() {
            if device.mrs[index].is_some() {
                device.dereg(index)?;
            }
        }
        // SAFETY: the PD is allocated and no longer holds any MR.
        let rc = unsafe { ibv_dealloc_pd(device.pd) };
        if rc != 0 {
            return Err(errno_error("ibv_dealloc_pd", rc));
        }
        let device = self.device.take().expect("checked by self.device()");
        // SAFETY: the context is open and owns nothing any more.
        if unsafe { ibv_close_device(device.context) } != 0 {
            return Err(os_error("ibv_close_device"));
        }
        Ok(())
    }

    fn device(&mut self) -> Result<&mut Device, String> {
        self.device.as_mut().ok_or_else(|| "no device: send `open` first".into())
    }
}

impl super::Pinner for Rdma {
    fn command(&mut self, command: &str, args: &[&str]) -> Result<(), String> {
        Rdma::command(self, command, args)
    }

    /// The uverbs fd lives inside libibverbs' context; not handed over.
    fn pinning_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}
