//! VDUSE (vDPA Device in Userspace) umems, per include/uapi/linux/vduse.h:
//! this process is the userspace side of a VDUSE virtio-net device and
//! registers memory for its bounce range (VDUSE_IOTLB_REG_UMEM), which the
//! kernel pins long-term and charges to `mm->pinned_vm` against
//! RLIMIT_MEMLOCK, root included.
//!
//! Commands:
//! - `create <name>`: create the device on `/dev/vduse/control` (API
//!   version 0, virtio-net, two virtqueues of 256), open `/dev/vduse/<name>`
//!   and answer the kernel's requests on it (set status, virtqueue state,
//!   IOTLB updates: all `OK`) from a thread, as a device daemon does. The
//!   kernel only accepts a umem once the device is on the vdpa bus and its
//!   driver has mapped DMA through the bounce range (`vdpa dev add`, then
//!   the interface up: see the `vduse` scenario).
//! - `memlock <size>`: set RLIMIT_MEMLOCK (soft and hard) to `size`.
//! - `reg <size>`: register fresh anonymous memory of `size` (the bounce
//!   size, 64 MiB by default) at IOVA 0.
//! - `dereg <size>`: deregister it.
//! - `close`: stop answering and close the device fd (the kernel then
//!   deregisters a umem still registered).
//! - `destroy <name>`: destroy the device (it must be off the vdpa bus and
//!   no longer open).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::{anonymous_memory, ioctl, memlock, open, os_error, parse_size};

/// `_IOW(VDUSE_BASE, nr, size)`: VDUSE_BASE is 0x81.
const fn vduse_iow(nr: libc::c_ulong, size: usize) -> libc::c_ulong {
    (1 << 30) | ((size as libc::c_ulong) << 16) | (0x81 << 8) | nr
}

const VDUSE_SET_API_VERSION: libc::c_ulong = vduse_iow(0x01, 8);
const VDUSE_CREATE_DEV: libc::c_ulong = vduse_iow(0x02, CONFIG_HEADER);
const VDUSE_DESTROY_DEV: libc::c_ulong = vduse_iow(0x03, NAME_MAX);
const VDUSE_VQ_SETUP: libc::c_ulong = vduse_iow(0x14, std::mem::size_of::<VqConfig>());
const VDUSE_IOTLB_REG_UMEM: libc::c_ulong = vduse_iow(0x18, std::mem::size_of::<IovaUmem>());
const VDUSE_IOTLB_DEREG_UMEM: libc::c_ulong = vduse_iow(0x19, std::mem::size_of::<IovaUmem>());

const NAME_MAX: usize = 256;
/// `offsetof(struct vduse_dev_config, config)`: what CREATE_DEV's number encodes.
const CONFIG_HEADER: usize = 336;
const VIRTIO_ID_NET: u32 = 1;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Required by vduse_validate_config: the device sits behind an IOMMU (VA mode).
const VIRTIO_F_ACCESS_PLATFORM: u64 = 1 << 33;
const VIRTQUEUES: u32 = 2;
/// `struct virtio_net_config` up to `mtu`: all zero (the driver makes up a MAC).
const NET_CONFIG_SIZE: usize = 12;
/// `struct vduse_dev_request` and `struct vduse_dev_response` are both 152 bytes.
const MESSAGE_SIZE: usize = 152;

/// `struct vduse_dev_config` followed by the device's config space.
#[repr(C)]
struct DevConfig {
    name: [u8; NAME_MAX],
    vendor_id: u32,
    device_id: u32,
    features: u64,
    vq_num: u32,
    vq_align: u32,
    reserved: [u32; 13],
    config_size: u32,
    config: [u8; NET_CONFIG_SIZE],
}

/// `struct vduse_vq_config`.
#[repr(C)]
struct VqConfig {
    index: u32,
    max_size: u16,
    reserved: [u16; 13],
}

/// `struct vduse_iova_umem` (7.x names `reserved[0]` `asid`; 0 either way).
#[repr(C)]
struct IovaUmem {
    uaddr: u64,
    iova: u64,
    size: u64,
    reserved: [u64; 3],
}

/// The device fd and the thread answering the kernel on it.
struct Device {
    fd: OwnedFd,
    stop: Arc<AtomicBool>,
    responder: JoinHandle<()>,
}

#[derive(Default)]
pub struct Vduse {
    device: Option<Device>,
}

impl super::Pinner for Vduse {
    fn pinning_fd(&self) -> Option<RawFd> {
        self.device.as_ref().map(|d| d.fd.as_raw_fd())
    }

    fn command(&mut self, command: &str, args: &[&str]) -> Result<(), String> {
        match (command, args) {
            ("create", [name]) => self.create(name),
            ("memlock", [size]) => memlock(parse_size(size)?),
            ("reg", [size]) => {
                let size = parse_size(size)?;
                let uaddr = anonymous_memory(size)? as u64;
                self.umem_ioctl(VDUSE_IOTLB_REG_UMEM, "VDUSE_IOTLB_REG_UMEM", uaddr, size)
            }
            ("dereg", [size]) => {
                self.umem_ioctl(VDUSE_IOTLB_DEREG_UMEM, "VDUSE_IOTLB_DEREG_UMEM", 0, parse_size(size)?)
            }
            ("close", []) => {
                let device = self.device.take().ok_or("no device: send `create <name>` first")?;
                device.stop.store(true, Ordering::Relaxed);
                device.responder.join().map_err(|_| "the responder thread panicked".to_string())?;
                Ok(())
            }
            ("destroy", [name]) => {
                let control = control()?;
                let mut buf = [0u8; NAME_MAX];
                copy_name(&mut buf, name)?;
                ioctl(&control, VDUSE_DESTROY_DEV, buf.as_ptr() as libc::c_ulong, "VDUSE_DESTROY_DEV").map(drop)
            }
            _ => Err(format!("unknown vduse command {command:?} {args:?}")),
        }
    }
}

impl Vduse {
    fn create(&mut self, name: &str) -> Result<(), String> {
        if self.device.is_some() {
            return Err("a device is already open: send `close` first".into());
        }
        let control = control()?;
        let mut config = DevConfig {
            name: [0; NAME_MAX],
            vendor_id: 0,
            device_id: VIRTIO_ID_NET,
            features: VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM,
            vq_num: VIRTQUEUES,
            vq_align: 4096,
            reserved: [0; 13],
            config_size: NET_CONFIG_SIZE as u32,
            config: [0; NET_CONFIG_SIZE],
        };
        copy_name(&mut config.name, name)?;
        ioctl(&control, VDUSE_CREATE_DEV, &config as *const DevConfig as libc::c_ulong, "VDUSE_CREATE_DEV")?;
        let fd = open(&format!("/dev/vduse/{name}"))?;
        for index in 0..VIRTQUEUES {
            let vq = VqConfig { index, max_size: 256, reserved: [0; 13] };
            ioctl(&fd, VDUSE_VQ_SETUP, &vq as *const VqConfig as libc::c_ulong, "VDUSE_VQ_SETUP")?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let raw = fd.as_raw_fd();
        let flag = Arc::clone(&stop);
        let responder = std::thread::spawn(move || answer_requests(raw, &flag));
        self.device = Some(Device { fd, stop, responder });
        Ok(())
    }

    fn umem_ioctl(&self, request: libc::c_ulong, name: &str, uaddr: u64, size: usize) -> Result<(), String> {
        let device = self.device.as_ref().ok_or("no device: send `create <name>` first")?;
        let umem = IovaUmem { uaddr, iova: 0, size: size as u64, reserved: [0; 3] };
        ioctl(&device.fd, request, &umem as *const IovaUmem as libc::c_ulong, name).map(drop)
    }
}

/// `/dev/vduse/control`, at API version 0 (one address space).
fn control() -> Result<OwnedFd, String> {
    let control = open("/dev/vduse/control")?;
    let version: u64 = 0;
    ioctl(&control, VDUSE_SET_API_VERSION, &version as *const u64 as libc::c_ulong, "VDUSE_SET_API_VERSION")?;
    Ok(control)
}

fn copy_name(buf: &mut [u8; NAME_MAX], name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() >= NAME_MAX {
        return Err(format!("bad device name {name:?}"));
    }
    buf[..name.len()].copy_from_slice(name.as_bytes());
    Ok(())
}

/// Answer every request the kernel queues on the device fd with `OK`
/// (request id copied, result 0), until `stop`. Polls, so that closing
/// the fd is never held up by a read in progress.
fn answer_requests(fd: RawFd, stop: &AtomicBool) {
    let mut request = [0u8; MESSAGE_SIZE];
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd; the fd stays open until `stop` is seen.
        if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
            continue;
        }
        // SAFETY: reads into our own buffer of its length.
        let n = unsafe { libc::read(fd, request.as_mut_ptr().cast(), MESSAGE_SIZE) };
        if n != MESSAGE_SIZE as isize {
            eprintln!("vduse responder: {}", os_error("read"));
            continue;
        }
        let mut response = [0u8; MESSAGE_SIZE];
        response[..4].copy_from_slice(&request[4..8]);
        // SAFETY: writes our own buffer of its length.
        if unsafe { libc::write(fd, response.as_ptr().cast(), MESSAGE_SIZE) } != MESSAGE_SIZE as isize {
            eprintln!("vduse responder: {}", os_error("write"));
        }
    }
}
