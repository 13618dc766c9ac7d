//! VFIO type1 DMA maps through the container ioctls (the uAPI numbers and
//! structs of include/uapi/linux/vfio.h), the legacy container path that
//! pins with `vfio_pin_pages_remote` and charges `mm->locked_vm`.
//!
//! Commands:
//! - `open <group>`: open `/dev/vfio/vfio`, check the API, attach the group
//!   (e.g. `/dev/vfio/3`, see `crate::devices::vfio_edu_group`) and select
//!   the type1v2 IOMMU.
//! - `map <iova> <size>`: map fresh anonymous memory of `size` at `iova`
//!   (`0x100000` or `1048576`), readable and writable by the device.
//! - `map-reuse <iova> <size>`: the same with this process's reusable
//!   memory of `size` (`super::reusable_memory`: allocated once, then the
//!   same pages every time), for map/unmap loops.
//! - `unmap <iova> <size>`: unmap exactly that range.
//! - `close`: close the group and the container, releasing every map.
//! - `memlock <size>`: set this process's RLIMIT_MEMLOCK (soft and hard) to
//!   `size`, so an unprivileged map beyond it fails in the kernel's check.
//! - `claim <size> <rounds> <report>`: map `size` of an unbacked range (it
//!   must fail), timed (`super::time_claim`).
//! - `map-wrapping <size>`: map `size` bytes (near 2^64) from one real page
//!   at iova 0: the kernel refuses it as overflowing (EINVAL).
//! - `map-threads <n> <size> <report>`: `n` threads map `size` of fresh
//!   memory at once (`mapped M refused R` in `<report>`); `close` unmaps.
//! - `race <attempts> <small> <large> <report>`: the double-fetch attack on
//!   the refusal point. A thread flips the `size` of one MAP_DMA request
//!   between `small` and `large` while this thread maps it at iova 0
//!   `attempts` times, unmapping each success; after every attempt
//!   `<report>` says `attempts A refused R small S large L` (L: the race
//!   was won, the kernel mapped `large` where the check read `small`).
//!
//! A non-root workload (`pincg-workload --user UID vfio`) needs the group
//! node to be its own: see `crate::devices::allow_user`. `/dev/vfio/vfio`
//! is world-accessible.

use std::os::fd::{AsRawFd, OwnedFd};

use super::{anonymous_memory, ioctl, memlock, open, parse_iova, parse_size, reusable_memory};

/// `_IO(VFIO_TYPE, VFIO_BASE + n)`: VFIO_TYPE is `';'` (0x3b), VFIO_BASE
/// 100. `_IO` encodes no size or direction, so this is `0x3b00 | (100 + n)`.
const fn vfio_io(n: libc::c_ulong) -> libc::c_ulong {
    ((b';' as libc::c_ulong) << 8) | (100 + n)
}

/// Container: returns `VFIO_API_VERSION`.
const VFIO_GET_API_VERSION: libc::c_ulong = vfio_io(0);
/// Container: returns > 0 if the IOMMU type given by value is supported.
const VFIO_CHECK_EXTENSION: libc::c_ulong = vfio_io(1);
/// Container: selects the IOMMU type given by value (needs a group attached).
const VFIO_SET_IOMMU: libc::c_ulong = vfio_io(2);
/// Group: fills a `GroupStatus`.
const VFIO_GROUP_GET_STATUS: libc::c_ulong = vfio_io(3);
/// Group: attaches to the container whose fd an `int *` points to.
const VFIO_GROUP_SET_CONTAINER: libc::c_ulong = vfio_io(4);
/// Container (type1): maps and pins a `DmaMap`.
const VFIO_IOMMU_MAP_DMA: libc::c_ulong = vfio_io(13);
/// Container (type1): unmaps and unpins a `DmaUnmap`; writes back the size.
const VFIO_IOMMU_UNMAP_DMA: libc::c_ulong = vfio_io(14);

/// The only uAPI version there has ever been.
const VFIO_API_VERSION: libc::c_int = 0;
/// Type1 IOMMU, version 2 semantics (no partial unmaps of a mapping).
const VFIO_TYPE1V2_IOMMU: libc::c_ulong = 3;
/// `GroupStatus::flags`: every device in the group is bound to a VFIO driver.
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1 << 0;
/// `DmaMap::flags`: the device may read, and write, the memory.
const VFIO_DMA_MAP_FLAG_READ: u32 = 1 << 0;
const VFIO_DMA_MAP_FLAG_WRITE: u32 = 1 << 1;

/// `struct vfio_group_status`.
#[repr(C)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

/// `struct vfio_iommu_type1_dma_map`.
#[repr(C)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

/// `struct vfio_iommu_type1_dma_unmap` without its trailing flexible
/// array (only used with the dirty-bitmap flag).
#[repr(C)]
struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

/// `struct vfio_iommu_type1_dma_map` whose `size` another thread changes
/// while the kernel reads it (AtomicU64 has u64's layout).
#[repr(C)]
struct RacedDmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: std::sync::atomic::AtomicU64,
}

/// The size of a uAPI struct, as its `argsz` field wants it.
fn argsz<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

/// A VFIO container with one group attached.
#[derive(Default)]
pub struct Vfio {
    container: Option<OwnedFd>,
    group: Option<OwnedFd>,
}

impl Vfio {
    /// Run one workload command.
    pub fn command(&mut self, command: &str, args: &[&str]) -> Result<(), String> {
        match (command, args) {
            ("open", [group]) => self.open(group),
            ("map", [iova, size]) => {
                let size = parse_size(size)?;
                self.map(parse_iova(iova)?, anonymous_memory(size)?, size)
            }
            ("map-reuse", [iova, size]) => {
                let size = parse_size(size)?;
                self.map(parse_iova(iova)?, reusable_memory(size)?, size)
            }
            ("unmap", [iova, size]) => self.unmap(parse_iova(iova)?, parse_size(size)?),
            ("close", []) => {
                // Detaching the container's last group releases the IOMMU
                // backend and with it every map; the container goes after.
                self.group = None;
                self.container = None;
                Ok(())
            }
            ("memlock", [size]) => memlock(parse_size(size)?),
            ("claim", args) => super::time_claim(args, |range, size| self.map(0, range, size)),
            ("map-wrapping", [size]) => self.map(0, anonymous_memory(4096)?, parse_size(size)?),
            ("map-threads", [n, size, report]) => {
                let n: u64 = n.parse().map_err(|_| format!("bad count {n:?}"))?;
                self.map_threads(n, parse_size(size)?, report)
            }
            ("race", [attempts, small, large, report]) => {
                let attempts = attempts.parse().map_err(|_| format!("bad count {attempts:?}"))?;
                self.race(attempts, parse_size(small)?, parse_size(large)?, report)
            }
            _ => Err(format!("unknown vfio command {command:?} {args:?}")),
        }
    }

    fn open(&mut self, group_path: &str) -> Result<(), String> {
        if self.container.is_some() {
            // A group can be open only once: the kernel would answer EBUSY.
            return Err("a container is already open: send `close` first".into());
        }
        let container = open("/dev/vfio/vfio")?;
        let version = ioctl(&container, VFIO_GET_API_VERSION, 0, "VFIO_GET_API_VERSION")?;
        if version != VFIO_API_VERSION {
            return Err(format!("VFIO_GET_API_VERSION: {version}, expected {VFIO_API_VERSION}"));
        }
        if ioctl(&container, VFIO_CHECK_EXTENSION, VFIO_TYPE1V2_IOMMU, "VFIO_CHECK_EXTENSION")? <= 0 {
            return Err("VFIO_CHECK_EXTENSION: no type1v2 IOMMU (is vfio_iommu_type1 loaded?)".into());
        }

        let group = open(group_path)?;
        let mut status = GroupStatus { argsz: argsz::<GroupStatus>(), flags: 0 };
        ioctl(
            &group,
            VFIO_GROUP_GET_STATUS,
            &mut status as *mut GroupStatus as libc::c_ulong,
            "VFIO_GROUP_GET_STATUS",
        )?;
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(format!("{group_path} is not viable: a device in it is not bound to vfio"));
        }
        let container_fd: libc::c_int = container.as_raw_fd();
        ioctl(
            &group,
            VFIO_GROUP_SET_CONTAINER,
            &container_fd as *const libc::c_int as libc::c_ulong,
            "VFIO_GROUP_SET_CONTAINER",
        )?;
        ioctl(&container, VFIO_SET_IOMMU, VFIO_TYPE1V2_IOMMU, "VFIO_SET_IOMMU")?;

        self.container = Some(container);
        self.group = Some(group);
        Ok(())
    }

    /// Map `size` bytes at `vaddr`, memory that stays mapped in this
    /// process (like the workload's other buffers) whatever the kernel
    /// answers.
    /// Map `size` bytes at `addr` to `iova` and unmap them, `rounds` times.
    pub fn churn(&self, iova: u64, addr: usize, size: usize, rounds: u64) -> Result<(), String> {
        for _ in 0..rounds {
            self.map(iova, addr as *mut libc::c_void, size)?;
            self.unmap(iova, size)?;
        }
        Ok(())
    }

    fn map(&self, iova: u64, vaddr: *mut libc::c_void, size: usize) -> Result<(), String> {
        let container = self.container()?;
        let map = DmaMap {
            argsz: argsz::<DmaMap>(),
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr: vaddr as u64,
            iova,
            size: size as u64,
        };
        ioctl(container, VFIO_IOMMU_MAP_DMA, &map as *const DmaMap as libc::c_ulong, "VFIO_IOMMU_MAP_DMA")?;
        Ok(())
    }

    /// Unmap `[iova, iova + size)`; the kernel reports how much it unmapped,
    /// which must be all of it (it silently unmaps nothing at a wrong iova).
    fn unmap(&self, iova: u64, size: usize) -> Result<(), String> {
        let unmapped = self.unmap_within(iova, size)?;
        if unmapped != size as u64 {
            return Err(format!("VFIO_IOMMU_UNMAP_DMA: unmapped {unmapped} bytes, not {size}"));
        }
        Ok(())
    }

    /// Unmap every mapping inside `[iova, iova + size)`; returns the bytes
    /// the kernel unmapped.
    fn unmap_within(&self, iova: u64, size: usize) -> Result<u64, String> {
        let container = self.container()?;
        let mut unmap = DmaUnmap { argsz: argsz::<DmaUnmap>(), flags: 0, iova, size: size as u64 };
        ioctl(container, VFIO_IOMMU_UNMAP_DMA, &mut unmap as *mut DmaUnmap as libc::c_ulong, "VFIO_IOMMU_UNMAP_DMA")?;
        Ok(unmap.size)
    }

    /// `race`: see the module documentation. The request sits alone in a
    /// shared page whose mapping is dropped (MADV_DONTNEED keeps shmem's
    /// content) before each attempt: the refusal point's read faults it in,
    /// which lets the flipping thread (on the other CPU) change `size`
    /// before the kernel's own read far more often than a hot page would.
    fn race(&self, attempts: u64, small: usize, large: usize, report: &str) -> Result<(), String> {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let container = self.container()?;
        let vaddr = reusable_memory(large)? as u64;
        let (small, large) = (small as u64, large as u64);
        let page = 4096; // x86_64, where the guests run
                         // SAFETY: a fresh shared anonymous page, used only as `RacedDmaMap`.
        let shared = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if shared == libc::MAP_FAILED {
            return Err(super::os_error("mmap(MAP_SHARED)"));
        }
        let request = shared.cast::<RacedDmaMap>();
        // SAFETY: the page is writable, page-aligned and larger than the struct.
        unsafe {
            request.write(RacedDmaMap {
                argsz: argsz::<DmaMap>(),
                flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
                vaddr,
                iova: 0,
                size: AtomicU64::new(small),
            })
        };
        // SAFETY: the page stays mapped until the end of this function.
        let map = unsafe { &*request };
        let size = &map.size;
        let stop = AtomicBool::new(false);
        let (mut refused, mut mapped_small, mut mapped_large) = (0u64, 0u64, 0u64);
        let outcome = std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    size.store(large, Ordering::Relaxed);
                    size.store(small, Ordering::Relaxed);
                }
            });
            let outcome = (1..=attempts).try_for_each(|attempt| {
                // SAFETY: advice on the page mapped above; shmem keeps its content.
                if unsafe { libc::madvise(shared, page, libc::MADV_DONTNEED) } != 0 {
                    return Err(super::os_error("madvise(MADV_DONTNEED)"));
                }
                let arg = request as libc::c_ulong;
                match ioctl(container, VFIO_IOMMU_MAP_DMA, arg, "VFIO_IOMMU_MAP_DMA") {
                    Ok(_) => match self.unmap_within(0, large as usize)? {
                        n if n == small => mapped_small += 1,
                        n if n == large => mapped_large += 1,
                        n => return Err(format!("attempt {attempt}: {n} bytes were mapped")),
                    },
                    Err(e) if e.contains("Cannot allocate memory") => refused += 1,
                    Err(e) => return Err(e),
                }
                let line = format!("attempts {attempt} refused {refused} small {mapped_small} large {mapped_large}\n");
                std::fs::write(report, line).map_err(|e| format!("{report}: {e}"))
            });
            stop.store(true, Ordering::Relaxed);
            outcome
        });
        // SAFETY: the flipping thread has ended; nothing refers to the page.
        unsafe { libc::munmap(shared, page) };
        outcome
    }

    /// `map-threads <n> <size> <report>`: `n` threads map `size` of fresh
    /// memory each, at iovas of their own, released together; `<report>`
    /// says `mapped M refused R`.
    fn map_threads(&self, n: u64, size: usize, report: &str) -> Result<(), String> {
        let memory = (0..n).map(|_| anonymous_memory(size).map(|p| p as usize)).collect::<Result<Vec<_>, _>>()?;
        let start = std::sync::Barrier::new(n as usize);
        let outcomes: Vec<Result<(), String>> = std::thread::scope(|s| {
            let threads: Vec<_> = memory
                .iter()
                .enumerate()
                .map(|(i, vaddr)| {
                    let start = &start;
                    s.spawn(move || {
                        start.wait();
                        self.map(((i as u64) + 1) << 32, *vaddr as *mut libc::c_void, size)
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap_or_else(|_| Err("a mapping thread panicked".into()))).collect()
        });
        let mapped = outcomes.iter().filter(|o| o.is_ok()).count();
        let refused = outcomes.iter().filter(|o| matches!(o, Err(e) if e.contains("Cannot allocate memory"))).count();
        if let Some(Err(e)) = outcomes.iter().find(|o| matches!(o, Err(e) if !e.contains("Cannot allocate memory"))) {
            return Err(e.clone());
        }
        std::fs::write(report, format!("mapped {mapped} refused {refused}\n")).map_err(|e| format!("{report}: {e}"))
    }

    fn container(&self) -> Result<&OwnedFd, String> {
        self.container.as_ref().ok_or_else(|| "no container: send `open <group>` first".into())
    }
}

impl super::Pinner for Vfio {
    fn command(&mut self, command: &str, args: &[&str]) -> Result<(), String> {
        Vfio::command(self, command, args)
    }

    /// The group fd: whoever holds it keeps the group attached to the
    /// container, and so the mappings alive; its last close unmaps them.
    fn pinning_fd(&self) -> Option<std::os::fd::RawFd> {
        self.group.as_ref().map(std::os::fd::AsRawFd::as_raw_fd)
    }
}
