//! iommufd IOAS maps (include/uapi/linux/iommufd.h) with the `edu` device
//! bound through its VFIO cdev (include/uapi/linux/vfio.h), on a kernel
//! built with IOMMUFD and VFIO_DEVICE_CDEV. `claim SIZE ROUNDS REPORT`
//! times `super::time_claim` with IOAS_MAP into IOAS 0.

use std::os::fd::{AsRawFd, OwnedFd};

use super::{anonymous_memory, ioctl, open, parse_iova, parse_size};

const IOMMU_IOAS_ALLOC: libc::c_ulong = 0x3b81;
const IOMMU_IOAS_COPY: libc::c_ulong = 0x3b83;
const IOMMU_IOAS_MAP: libc::c_ulong = 0x3b85;
const IOMMU_IOAS_UNMAP: libc::c_ulong = 0x3b86;
const IOMMU_OPTION: libc::c_ulong = 0x3b87;
const VFIO_DEVICE_BIND_IOMMUFD: libc::c_ulong = 0x3b76;
const VFIO_DEVICE_ATTACH_IOMMUFD_PT: libc::c_ulong = 0x3b77;

const IOMMU_IOAS_MAP_FIXED_IOVA: u32 = 1;
const IOMMU_IOAS_MAP_WRITEABLE: u32 = 2;
const IOMMU_IOAS_MAP_READABLE: u32 = 4;
const IOMMU_OPTION_RLIMIT_MODE: u32 = 0;
const IOMMU_OPTION_OP_SET: u16 = 0;
/// Where `claim` maps its unbacked range, in IOAS 0.
const CLAIM_IOVA: u64 = 1 << 40;

#[repr(C)]
struct IoasAlloc {
    size: u32,
    flags: u32,
    out_ioas_id: u32,
}

#[repr(C)]
struct IoasMap {
    size: u32,
    flags: u32,
    ioas_id: u32,
    reserved: u32,
    user_va: u64,
    length: u64,
    iova: u64,
}

#[repr(C)]
struct IoasCopy {
    size: u32,
    flags: u32,
    dst_ioas_id: u32,
    src_ioas_id: u32,
    length: u64,
    dst_iova: u64,
    src_iova: u64,
}

#[repr(C)]
struct IoasUnmap {
    size: u32,
    ioas_id: u32,
    iova: u64,
    length: u64,
}

#[repr(C)]
struct IommuOption {
    size: u32,
    option_id: u32,
    op: u16,
    reserved: u16,
    object_id: u32,
    val64: u64,
}

#[repr(C)]
struct BindIommufd {
    argsz: u32,
    flags: u32,
    iommufd: i32,
    out_devid: u32,
}

#[repr(C)]
struct AttachPt {
    argsz: u32,
    flags: u32,
    pt_id: u32,
}

/// An iommufd context with IOASes, and the device attached to the first.
#[derive(Default)]
pub struct Iommufd {
    iommufd: Option<OwnedFd>,
    device: Option<OwnedFd>,
    /// IOAS ids in creation order; commands name them by index.
    ioas: Vec<u32>,
}

impl super::Pinner for Iommufd {
    fn pinning_fd(&self) -> Option<i32> {
        self.iommufd.as_ref().map(|fd| fd.as_raw_fd())
    }

    fn command(&mut self, command: &str, args: &[&str]) -> Result<(), String> {
        match (command, args) {
            ("open", []) => self.open(),
            ("rlimit-mode", [mode]) => self.rlimit_mode(mode),
            // Set up as root, then map as a tenant: the account mode of a
            // mapping is decided by the mapping task's CAP_IPC_LOCK.
            ("become", [uid]) => super::drop_privileges(uid.parse().map_err(|_| format!("bad uid {uid:?}"))?),
            ("ioas", []) => self.alloc_ioas(),
            ("attach", [device]) => self.attach(device),
            ("map", [ioas, iova, size]) => {
                let bytes = parse_size(size)?;
                self.map(index(ioas)?, parse_iova(iova)?, anonymous_memory(bytes)?, bytes)
            }
            ("claim", args) => super::time_claim(args, |range, size| self.map(0, CLAIM_IOVA, range, size)),
            ("copy", [from, to, iova, size]) => {
                self.copy(index(from)?, index(to)?, parse_iova(iova)?, parse_size(size)?)
            }
            ("unmap", [ioas, iova, size]) => self.unmap(index(ioas)?, parse_iova(iova)?, parse_size(size)?),
            ("close", []) => {
                self.device = None;
                self.iommufd = None;
                self.ioas.clear();
                Ok(())
            }
            _ => Err(format!("unknown iommufd command {command:?} {args:?}")),
        }
    }
}

fn index(text: &str) -> Result<usize, String> {
    text.parse().map_err(|_| format!("bad IOAS index {text:?}"))
}

impl Iommufd {
    fn fd(&self) -> Result<&OwnedFd, String> {
        self.iommufd.as_ref().ok_or_else(|| "send `open` first".into())
    }

    fn ioas_id(&self, index: usize) -> Result<u32, String> {
        self.ioas.get(index).copied().ok_or_else(|| format!("no IOAS {index}: send `ioas` first"))
    }

    fn open(&mut self) -> Result<(), String> {
        self.iommufd = Some(open("/dev/iommu")?);
        Ok(())
    }

    /// `user` (0, the /dev/iommu default: user->locked_vm) or `mm` (1:
    /// mm->locked_vm, VFIO style). Needs CAP_SYS_RESOURCE and no objects yet.
    fn rlimit_mode(&self, mode: &str) -> Result<(), String> {
        let val64 = match mode {
            "user" => 0,
            "mm" => 1,
            other => return Err(format!("rlimit mode {other:?} is not user or mm")),
        };
        let mut opt = IommuOption {
            size: std::mem::size_of::<IommuOption>() as u32,
            option_id: IOMMU_OPTION_RLIMIT_MODE,
            op: IOMMU_OPTION_OP_SET,
            reserved: 0,
            object_id: 0,
            val64,
        };
        ioctl(self.fd()?, IOMMU_OPTION, &mut opt as *mut _ as libc::c_ulong, "IOMMU_OPTION(RLIMIT_MODE)").map(drop)
    }

    fn alloc_ioas(&mut self) -> Result<(), String> {
        let mut alloc = IoasAlloc { size: std::mem::size_of::<IoasAlloc>() as u32, flags: 0, out_ioas_id: 0 };
        ioctl(self.fd()?, IOMMU_IOAS_ALLOC, &mut alloc as *mut _ as libc::c_ulong, "IOMMU_IOAS_ALLOC")?;
        self.ioas.push(alloc.out_ioas_id);
        Ok(())
    }

    /// Bind the VFIO device cdev to this context and attach it to IOAS 0.
    fn attach(&mut self, device_path: &str) -> Result<(), String> {
        let device = open(device_path)?;
        let mut bind = BindIommufd {
            argsz: std::mem::size_of::<BindIommufd>() as u32,
            flags: 0,
            iommufd: self.fd()?.as_raw_fd(),
            out_devid: 0,
        };
        ioctl(&device, VFIO_DEVICE_BIND_IOMMUFD, &mut bind as *mut _ as libc::c_ulong, "VFIO_DEVICE_BIND_IOMMUFD")?;
        let mut attach = AttachPt { argsz: std::mem::size_of::<AttachPt>() as u32, flags: 0, pt_id: self.ioas_id(0)? };
        ioctl(
            &device,
            VFIO_DEVICE_ATTACH_IOMMUFD_PT,
            &mut attach as *mut _ as libc::c_ulong,
            "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
        )?;
        self.device = Some(device);
        Ok(())
    }

    fn map(&self, ioas: usize, iova: u64, va: *mut libc::c_void, bytes: usize) -> Result<(), String> {
        let mut map = IoasMap {
            size: std::mem::size_of::<IoasMap>() as u32,
            flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE,
            ioas_id: self.ioas_id(ioas)?,
            reserved: 0,
            user_va: va as u64,
            length: bytes as u64,
            iova,
        };
        ioctl(self.fd()?, IOMMU_IOAS_MAP, &mut map as *mut _ as libc::c_ulong, "IOMMU_IOAS_MAP").map(drop)
    }

    /// Map the same pages again, at the same iova, in another IOAS.
    fn copy(&self, from: usize, to: usize, iova: u64, bytes: usize) -> Result<(), String> {
        let mut copy = IoasCopy {
            size: std::mem::size_of::<IoasCopy>() as u32,
            flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE,
            dst_ioas_id: self.ioas_id(to)?,
            src_ioas_id: self.ioas_id(from)?,
            length: bytes as u64,
            dst_iova: iova,
            src_iova: iova,
        };
        ioctl(self.fd()?, IOMMU_IOAS_COPY, &mut copy as *mut _ as libc::c_ulong, "IOMMU_IOAS_COPY").map(drop)
    }

    fn unmap(&self, ioas: usize, iova: u64, bytes: usize) -> Result<(), String> {
        let mut unmap = IoasUnmap {
            size: std::mem::size_of::<IoasUnmap>() as u32,
            ioas_id: self.ioas_id(ioas)?,
            iova,
            length: bytes as u64,
        };
        ioctl(self.fd()?, IOMMU_IOAS_UNMAP, &mut unmap as *mut _ as libc::c_ulong, "IOMMU_IOAS_UNMAP")?;
        if unmap.length != bytes as u64 {
            return Err(format!("IOMMU_IOAS_UNMAP unmapped {} bytes, not {bytes}", unmap.length));
        }
        Ok(())
    }
}
