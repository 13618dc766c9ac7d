//! io_uring registered buffers through the raw syscalls (the uAPI numbers
//! and structs of include/uapi/linux/io_uring.h), so every opcode can be
//! exercised whatever liburing version the machine has.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::tenant::{self, Forked};
use super::{anonymous_memory, os_error, parse_size, reusable_memory};

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
/// second appears when buffers are cloned into it; `spread` keeps its own.
#[derive(Default)]
pub struct Rings {
    main: Option<OwnedFd>,
    clone: Option<OwnedFd>,
    spread: Spread,
    /// The ring of `data-ring`, for `read-fixed`.
    data: Option<DataRing>,
    /// Rings of `extra` and `threads`, one buffer each.
    extras: Vec<OwnedFd>,
    /// The child of `fork`, until `reap`.
    child: Option<Forked>,
}

/// Many 4 KiB buffers registered from many cgroups (the scale benchmark):
/// sparse buffer tables of 16384 slots, filled slot by slot.
#[derive(Default)]
struct Spread {
    rings: Vec<OwnedFd>,
    /// Slots filled so far, across rings.
    used: usize,
}

const SLOTS_PER_RING: usize = 16384;
const IORING_RSRC_REGISTER_SPARSE: u32 = 1;

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
            // `register-n N SIZE`: N buffers of SIZE, each its own mapping
            // (so its own pin object), in one BUFFERS registration.
            ("register-n", [n, size]) => {
                let n: usize = n.parse().map_err(|_| format!("bad count {n:?}"))?;
                let size = parse_size(size)?;
                let iovs = (0..n).map(|_| buffer(size)).collect::<Result<Vec<_>, _>>()?;
                register(self.main()?, IORING_REGISTER_BUFFERS, iovs.as_ptr().cast(), n as u32)
            }
            // `extra SIZE`: one more ring with one buffer of SIZE.
            ("extra", [size]) => {
                self.extras.push(ring_with_buffer(parse_size(size)?)?);
                Ok(())
            }
            // `threads N SIZE`: N threads at once, each making an `extra`.
            ("threads", [n, size]) => {
                let (n, size) = (n.parse().map_err(|_| format!("bad count {n:?}"))?, parse_size(size)?);
                self.extras.extend(tenant::in_threads(n, || ring_with_buffer(size))?);
                Ok(())
            }
            // `fork SIZE`: a child that makes an `extra` and holds it; `reap` ends it.
            ("fork", [size]) => {
                let size = parse_size(size)?;
                self.child = Some(Forked::spawn(|| ring_with_buffer(size))?);
                Ok(())
            }
            ("reap", []) => self.child.take().ok_or("no forked child")?.reap(),
            // `exec PROGRAM ARGS...`: become PROGRAM, keeping every ring
            // open. Answers `ok` first: PROGRAM answers nothing.
            ("exec", argv) if !argv.is_empty() => {
                let fds: Vec<i32> = self.main.iter().chain(&self.extras).map(|fd| fd.as_raw_fd()).collect();
                use std::io::Write;
                let _ = writeln!(std::io::stdout(), "ok");
                let _ = std::io::stdout().flush();
                Err(tenant::exec(&fds, argv))
            }
            ("update-empty", [slot]) => self.update(slot, libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }),
            ("update-fresh", [slot, size]) => {
                let size = parse_size(size)?;
                self.update(slot, libc::iovec { iov_base: anonymous_memory(size)?, iov_len: size })
            }
            ("clone", []) => {
                let dst = setup()?;
                let clone = CloneBuffers { src_fd: self.main()? as u32, ..CloneBuffers::default() };
                register(dst.as_raw_fd(), IORING_REGISTER_CLONE_BUFFERS, (&clone as *const CloneBuffers).cast(), 1)?;
                self.clone = Some(dst);
                Ok(())
            }
            ("unregister", []) => register(self.main()?, IORING_UNREGISTER_BUFFERS, std::ptr::null(), 0),
            // `claim <size> <rounds> <report>`: register `size` of an
            // unbacked range as 1 GiB iovecs (the kernel's largest), timed
            // (`super::time_claim`).
            ("claim", args) => {
                let ring = self.main()?;
                super::time_claim(args, |range, size| {
                    const GIB: usize = 1 << 30;
                    let iovs: Vec<libc::iovec> = (0..size.div_ceil(GIB))
                        .map(|i| libc::iovec {
                            iov_base: range.wrapping_byte_add(i * GIB),
                            iov_len: GIB.min(size - i * GIB),
                        })
                        .collect();
                    register(ring, IORING_REGISTER_BUFFERS, iovs.as_ptr().cast(), iovs.len() as u32)
                })
            }
            // `register-reuse SIZE`: like `register`, with this process's
            // reusable memory of SIZE (the same pages every time).
            ("register-reuse", [size]) => {
                let bytes = parse_size(size)?;
                let iov = [libc::iovec { iov_base: reusable_memory(bytes)?, iov_len: bytes }];
                register(self.main()?, IORING_REGISTER_BUFFERS, iov.as_ptr().cast(), 1)
            }
            // `data-ring PATH SIZE`: a ring of its own with its queues
            // mapped, one SIZE buffer registered on it and PATH open.
            ("data-ring", [path, size]) => {
                self.data = Some(DataRing::new(path, parse_size(size)?)?);
                Ok(())
            }
            // `read-fixed N`: N READ_FIXED reads of SIZE bytes at offset 0
            // of PATH into the registered buffer, one at a time.
            ("read-fixed", [n]) => {
                let n: u64 = n.parse().map_err(|_| format!("bad count {n:?}"))?;
                let data = self.data.as_mut().ok_or("no data ring: send `data-ring PATH SIZE` first")?;
                (0..n).try_for_each(|_| data.read_fixed())
            }
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
            ("spread", [dir, from, to, per]) => {
                let number = |t: &str| t.parse::<usize>().map_err(|_| format!("bad number {t:?}"));
                self.spread(dir, number(from)?..number(to)?, number(per)?)
            }
            ("close", []) => {
                self.main = None;
                self.clone = None;
                self.spread = Spread::default();
                self.data = None;
                self.extras.clear();
                Ok(())
            }
            _ => Err(format!("unknown io_uring command {command:?} {args:?}")),
        }
    }
}

impl Rings {
    /// BUFFERS_UPDATE of one slot (`update-empty <slot>` empties it,
    /// `update-fresh <slot> <size>` puts a fresh buffer there).
    fn update(&self, slot: &str, iov: libc::iovec) -> Result<(), String> {
        let tag = 0u64;
        let update = RsrcUpdate2 {
            offset: slot.parse().map_err(|_| format!("bad slot {slot:?}"))?,
            data: &iov as *const _ as u64,
            tags: &tag as *const _ as u64,
            nr: 1,
            ..RsrcUpdate2::default()
        };
        let size = std::mem::size_of::<RsrcUpdate2>() as u32;
        register(self.main()?, IORING_REGISTER_BUFFERS_UPDATE, (&update as *const RsrcUpdate2).cast(), size)
    }

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

    /// `spread DIR FROM TO PER`: for each cgroup `DIR/c<i>`, i in FROM..TO,
    /// move into it and register PER buffers of 4 KiB (each its own page),
    /// so every cgroup is charged PER pin objects.
    fn spread(&mut self, dir: &str, cgroups: std::ops::Range<usize>, per: usize) -> Result<(), String> {
        const PAGE: usize = 4096;
        let me = std::process::id().to_string();
        let pages = anonymous_memory(cgroups.len() * per * PAGE)? as usize;
        let mut next_page = 0;
        for i in cgroups {
            let procs = format!("{dir}/c{i}/cgroup.procs");
            std::fs::write(&procs, &me).map_err(|e| format!("{procs}: {e}"))?;
            for _ in 0..per {
                let (ring, slot) = (self.spread.used / SLOTS_PER_RING, self.spread.used % SLOTS_PER_RING);
                if ring == self.spread.rings.len() {
                    self.spread.rings.push(sparse_ring()?);
                }
                let iov = libc::iovec { iov_base: (pages + next_page * PAGE) as *mut libc::c_void, iov_len: PAGE };
                let tag = 0u64;
                let update = RsrcUpdate2 {
                    offset: slot as u32,
                    data: &iov as *const _ as u64,
                    tags: &tag as *const _ as u64,
                    nr: 1,
                    ..RsrcUpdate2::default()
                };
                let size = std::mem::size_of::<RsrcUpdate2>() as u32;
                let fd = self.spread.rings[ring].as_raw_fd();
                register(fd, IORING_REGISTER_BUFFERS_UPDATE, (&update as *const RsrcUpdate2).cast(), size)?;
                self.spread.used += 1;
                next_page += 1;
            }
        }
        Ok(())
    }

    fn main(&self) -> Result<i32, String> {
        self.main.as_ref().map(|fd| fd.as_raw_fd()).ok_or_else(|| "no ring: send `ring` first".into())
    }
}

/// A ring with an empty buffer table of [`SLOTS_PER_RING`] slots.
fn sparse_ring() -> Result<OwnedFd, String> {
    let ring = setup()?;
    let reg = RsrcRegister { nr: SLOTS_PER_RING as u32, flags: IORING_RSRC_REGISTER_SPARSE, ..RsrcRegister::default() };
    let size = std::mem::size_of::<RsrcRegister>() as u32;
    register(ring.as_raw_fd(), IORING_REGISTER_BUFFERS2, (&reg as *const RsrcRegister).cast(), size)?;
    Ok(ring)
}

/// A ring with one buffer of `bytes` registered.
fn ring_with_buffer(bytes: usize) -> Result<OwnedFd, String> {
    let ring = setup()?;
    let iov = [buffer(bytes)?];
    register(ring.as_raw_fd(), IORING_REGISTER_BUFFERS, iov.as_ptr().cast(), 1)?;
    Ok(ring)
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

// The submission and completion queues (io_uring_setup(2)), for the data
// path: `data-ring` and `read-fixed`.
const IORING_OFF_SQ_RING: libc::off_t = 0;
const IORING_OFF_CQ_RING: libc::off_t = 0x800_0000;
const IORING_OFF_SQES: libc::off_t = 0x1000_0000;
const IORING_ENTER_GETEVENTS: u32 = 1;
const IORING_OP_READ_FIXED: u8 = 4;
const DATA_RING_ENTRIES: u32 = 8;

/// `struct io_sqring_offsets`.
#[repr(C)]
#[derive(Default)]
struct SqOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    flags: u32,
    dropped: u32,
    array: u32,
    resv1: u32,
    user_addr: u64,
}

/// `struct io_cqring_offsets`.
#[repr(C)]
#[derive(Default)]
struct CqOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    overflow: u32,
    cqes: u32,
    flags: u32,
    resv1: u32,
    user_addr: u64,
}

/// `struct io_uring_params`.
#[repr(C)]
#[derive(Default)]
struct Params {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    sq_off: SqOffsets,
    cq_off: CqOffsets,
}

/// `struct io_uring_sqe`, with the unions as the read opcodes use them.
#[repr(C)]
#[derive(Default)]
struct Sqe {
    opcode: u8,
    flags: u8,
    ioprio: u16,
    fd: i32,
    off: u64,
    addr: u64,
    len: u32,
    rw_flags: u32,
    user_data: u64,
    buf_index: u16,
    personality: u16,
    splice_fd_in: i32,
    addr3: u64,
    pad: u64,
}

/// `struct io_uring_cqe`.
#[repr(C)]
struct Cqe {
    user_data: u64,
    res: i32,
    flags: u32,
}

/// A shared mapping of one of a ring's regions.
struct Region {
    ptr: *mut u8,
    len: usize,
}

impl Region {
    fn map(ring: &OwnedFd, len: usize, offset: libc::off_t) -> Result<Region, String> {
        // SAFETY: maps a region the kernel made for this ring; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                ring.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(os_error(&format!("mmap io_uring region {offset:#x}")));
        }
        Ok(Region { ptr: ptr.cast(), len })
    }

    /// The field at byte `offset`, as the kernel's offsets give it.
    fn at<T>(&self, offset: u32) -> *mut T {
        // SAFETY: the kernel's offsets lie inside the region it sized.
        unsafe { self.ptr.add(offset as usize).cast() }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `Region::map`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A ring with its queues mapped, one registered buffer and a file to read:
/// one READ_FIXED at a time, submitted and reaped by hand.
struct DataRing {
    sq: Region,
    cq: Region,
    sqes: Region,
    params: Params,
    file: std::fs::File,
    buffer: *mut libc::c_void,
    bytes: usize,
    /// Last: closed after the regions are unmapped.
    ring: OwnedFd,
}

impl DataRing {
    fn new(path: &str, bytes: usize) -> Result<DataRing, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("open {path}: {e}"))?;
        let mut params = Params::default();
        // SAFETY: io_uring_setup reads and writes the params struct we own.
        let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, DATA_RING_ENTRIES, &mut params as *mut Params) };
        if fd < 0 {
            return Err(os_error("io_uring_setup"));
        }
        // SAFETY: the kernel just returned this descriptor to us.
        let ring = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let sq_len = params.sq_off.array as usize + params.sq_entries as usize * std::mem::size_of::<u32>();
        let cq_len = params.cq_off.cqes as usize + params.cq_entries as usize * std::mem::size_of::<Cqe>();
        let sqes_len = params.sq_entries as usize * std::mem::size_of::<Sqe>();
        let sq = Region::map(&ring, sq_len, IORING_OFF_SQ_RING)?;
        let cq = Region::map(&ring, cq_len, IORING_OFF_CQ_RING)?;
        let sqes = Region::map(&ring, sqes_len, IORING_OFF_SQES)?;
        let buffer = reusable_memory(bytes)?;
        let iov = [libc::iovec { iov_base: buffer, iov_len: bytes }];
        register(ring.as_raw_fd(), IORING_REGISTER_BUFFERS, iov.as_ptr().cast(), 1)?;
        Ok(DataRing { sq, cq, sqes, params, file, buffer, bytes, ring })
    }

    /// Read `bytes` at offset 0 of the file into buffer 0 and wait for it.
    fn read_fixed(&mut self) -> Result<(), String> {
        use std::sync::atomic::{AtomicU32, Ordering};
        let (sq_off, cq_off) = (&self.params.sq_off, &self.params.cq_off);
        // SAFETY: the offsets come from io_uring_setup for these mappings;
        // head and tail are u32s the kernel updates concurrently, hence
        // atomics; this process is the only submitter and reaper.
        unsafe {
            let sq_tail = AtomicU32::from_ptr(self.sq.at(sq_off.tail));
            let tail = sq_tail.load(Ordering::Relaxed);
            let index = tail & *self.sq.at::<u32>(sq_off.ring_mask);
            self.sq.at::<u32>(sq_off.array).add(index as usize).write(index);
            self.sqes.at::<Sqe>(0).add(index as usize).write(Sqe {
                opcode: IORING_OP_READ_FIXED,
                fd: std::os::fd::AsRawFd::as_raw_fd(&self.file),
                off: 0,
                addr: self.buffer as u64,
                len: self.bytes as u32,
                user_data: u64::from(tail),
                buf_index: 0,
                ..Sqe::default()
            });
            sq_tail.store(tail.wrapping_add(1), Ordering::Release);

            let rc = libc::syscall(
                libc::SYS_io_uring_enter,
                self.ring.as_raw_fd(),
                1u32,
                1u32,
                IORING_ENTER_GETEVENTS,
                std::ptr::null::<libc::c_void>(),
                0usize,
            );
            if rc < 0 {
                return Err(os_error("io_uring_enter"));
            }
            let cq_head = AtomicU32::from_ptr(self.cq.at(cq_off.head));
            let head = cq_head.load(Ordering::Relaxed);
            if head == AtomicU32::from_ptr(self.cq.at(cq_off.tail)).load(Ordering::Acquire) {
                return Err("io_uring_enter returned without a completion".into());
            }
            let cqe = self.cq.at::<Cqe>(cq_off.cqes).add((head & *self.cq.at::<u32>(cq_off.ring_mask)) as usize).read();
            cq_head.store(head.wrapping_add(1), Ordering::Release);
            if cqe.user_data != u64::from(tail) {
                return Err(format!("completion for request {}, expected {tail}", cqe.user_data));
            }
            if cqe.res != self.bytes as i32 {
                let what = match cqe.res {
                    res if res < 0 => std::io::Error::from_raw_os_error(-res).to_string(),
                    res => format!("{res} bytes"),
                };
                return Err(format!("READ_FIXED of {} bytes: {what}", self.bytes));
            }
        }
        Ok(())
    }
}
