//! Pins made before pincg's ledger existed: the BPF programs never saw
//! them, so they are in no cgroup's pins.current. At start with a fresh
//! ledger the agent finds them from each process's own counters
//! (`VmPin` + `VmLck` of /proc/<pid>/status: io_uring and RDMA pins count
//! in VmPin, VFIO in VmLck; mlock()ed memory also counts in VmLck; the
//! io_uring buffers 7.x leaves out of VmPin come from the rings' fdinfo)
//! and reports them per cgroup, apart from the ledger, until those
//! processes release them or exit.

use std::collections::HashMap;
use std::fs;

use procfs::process::Process;

/// Processes that held pins when the ledger was created.
#[derive(Debug, Default)]
pub struct Preexisting {
    /// pid → (cgroup path, bytes when last looked at).
    processes: HashMap<i32, (String, u64)>,
}

impl Preexisting {
    /// Every process holding pinned or locked memory now.
    pub fn scan() -> Preexisting {
        let mut processes = HashMap::new();
        for process in procfs::process::all_processes().into_iter().flatten().flatten() {
            if let Some((cgroup, bytes)) = pinned(&process) {
                processes.insert(process.pid, (cgroup, bytes));
            }
        }
        Preexisting { processes }
    }

    /// Look at the same processes again: released pins and exited
    /// processes drop out. New processes are not added (the ledger sees
    /// their pins).
    pub fn refresh(&mut self) {
        self.processes.retain(|pid, entry| match Process::new(*pid).ok().and_then(|p| pinned(&p)) {
            Some((cgroup, bytes)) => {
                *entry = (cgroup, entry.1.min(bytes));
                true
            }
            None => false,
        });
    }

    /// Bytes per cgroup path ("/a/b").
    pub fn by_cgroup(&self) -> HashMap<String, u64> {
        let mut out = HashMap::new();
        for (cgroup, bytes) in self.processes.values() {
            *out.entry(cgroup.clone()).or_insert(0) += bytes;
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }
}

/// The process's cgroup v2 path and pinned + locked bytes, if any. 7.x
/// charges the io_uring buffers of a CAP_IPC_LOCK task nowhere (VmPin
/// stays 0) but its rings' fdinfo lists them; VmPin already holds them on
/// 6.x and for other tasks, so the larger of the two counts.
fn pinned(process: &Process) -> Option<(String, u64)> {
    let status = process.status().ok()?;
    let vmpin = status.vmpin.unwrap_or(0) * 1024;
    let bytes = status.vmlck.unwrap_or(0) * 1024 + vmpin.max(io_uring_buffers(process.pid));
    if bytes == 0 {
        return None;
    }
    let cgroup = process.cgroups().ok()?.into_iter().find(|c| c.hierarchy == 0)?.pathname;
    Some((cgroup, bytes))
}

/// Bytes of the buffers registered on the io_uring rings process `pid` has
/// open (from their fdinfo), page-granular as the ledger counts them.
fn io_uring_buffers(pid: i32) -> u64 {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return 0 };
    fds.flatten()
        .filter(|fd| fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:[io_uring]"))
        .filter_map(|fd| fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy())).ok())
        .map(|fdinfo| registered_buffer_bytes(&fdinfo))
        .sum()
}

/// The `UserBufs:` section of an io_uring fdinfo: one `<slot>: 0x<address>/<length>`
/// line per registered buffer (other lines, such as empty slots, count 0).
fn registered_buffer_bytes(fdinfo: &str) -> u64 {
    const PAGE: u64 = 4096;
    let span = |line: &str| -> Option<u64> {
        let (_, range) = line.split_once(": 0x")?;
        let (address, length) = range.split_once('/')?;
        let (start, length) = (u64::from_str_radix(address, 16).ok()?, length.trim().parse::<u64>().ok()?);
        let end = start.checked_add(length)?.checked_add(PAGE - 1)? / PAGE * PAGE;
        (length > 0).then(|| end - start / PAGE * PAGE)
    };
    let section = fdinfo.lines().skip_while(|l| !l.starts_with("UserBufs:")).skip(1);
    section.take_while(|l| l.starts_with(' ')).filter_map(span).sum()
}

#[cfg(test)]
mod tests {
    use super::registered_buffer_bytes;

    #[test]
    fn registered_buffers_from_io_uring_fdinfo() {
        // 7.2's fdinfo (6.1's has the same section): a 1 MiB buffer, an
        // unaligned 5000-byte one over three pages, an empty slot.
        let fdinfo = "UserFiles:\t0\nUserBufs:\t3\n    0: 0x7f9e092f3000/1048576\n    1: 0x7f9e09400ffc/5000\n    2: <none>\nPollList:\n  op=1, task_works=0\n";
        assert_eq!(registered_buffer_bytes(fdinfo), 1048576 + 3 * 4096);
        assert_eq!(registered_buffer_bytes("UserBufs:\t0\nPollList:\n"), 0);
        assert_eq!(registered_buffer_bytes("UserBufs:\t1\n    0: 0xffffffffffffffff/0\n"), 0, "sparse placeholder");
        assert_eq!(registered_buffer_bytes("SqThread:\t-1\n"), 0, "no section");
    }
}
