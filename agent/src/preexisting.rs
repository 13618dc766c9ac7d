//! Pins made before pincg's ledger existed: the BPF programs never saw
//! them, so they are in no cgroup's pins.current. At start with a fresh
//! ledger the agent finds them from each process's own counters
//! (`VmPin` + `VmLck` of /proc/<pid>/status: io_uring and RDMA pins count
//! in VmPin, VFIO in VmLck; mlock()ed memory also counts in VmLck; the
//! io_uring buffers 7.x leaves out of VmPin come from the rings' fdinfo)
//! and reports them per cgroup, apart from the ledger, until those
//! processes release them or exit.
//!
//! What cannot be read is said, never guessed: in a PID namespace of its
//! own (a pod without hostPID) /proc shows none of the node's processes,
//! and without ptrace access (CAP_SYS_PTRACE, which the shipped unit and
//! DaemonSet do not grant) another process's open files are hidden. Then
//! the scan is incomplete: one log line, `pincg_preexisting_scan_complete 0`.

use std::collections::HashMap;
use std::fs;

use procfs::process::Process;

use tracing::warn;

/// `/proc/self/ns/pid` in the initial PID namespace (PROC_PID_INIT_INO,
/// fixed since Linux 3.8): the namespace whose pids BPF records.
const INIT_PID_NS: &str = "pid:[4026531836]";

/// CAP_IPC_LOCK's bit in `CapEff`.
const CAP_IPC_LOCK: u64 = 1 << 14;

/// Whether /proc lists the node's processes under the pids the ledger
/// records (the agent is in the initial PID namespace); why not otherwise.
pub fn host_processes_visible() -> Result<(), String> {
    match fs::read_link("/proc/self/ns/pid") {
        Ok(ns) if ns.as_os_str() == INIT_PID_NS => Ok(()),
        Ok(ns) => Err(format!(
            "the agent runs in a PID namespace of its own ({}), so /proc shows none of the node's processes (hostPID: false)",
            ns.display()
        )),
        Err(e) => Err(format!("/proc/self/ns/pid: {e}")),
    }
}

/// Processes that held pins when the ledger was created.
#[derive(Debug, Default)]
pub struct Preexisting {
    /// pid → (cgroup path, bytes when last looked at).
    processes: HashMap<i32, (String, u64)>,
    /// Whether the scan at start read every process (`None`: no scan ran,
    /// the ledger already existed).
    complete: Option<bool>,
}

impl Preexisting {
    /// Every process holding pinned or locked memory now.
    pub fn scan() -> Preexisting {
        if let Err(why) = host_processes_visible() {
            warn!(
                "pins made before pincg started are unknown: {why}; none is reported (pincg_preexisting_scan_complete 0)"
            );
            return Preexisting { processes: HashMap::new(), complete: Some(false) };
        }
        let mut processes = HashMap::new();
        let mut unreadable = Vec::new();
        for process in procfs::process::all_processes().into_iter().flatten().flatten() {
            match pinned(&process) {
                Pinned::Bytes(cgroup, bytes) => {
                    processes.insert(process.pid, (cgroup, bytes));
                }
                Pinned::Unreadable(cgroup) => unreadable.push(format!("{} in {cgroup}", process.pid)),
                Pinned::Nothing => {}
            }
        }
        if !unreadable.is_empty() {
            warn!(
                "pins made before pincg started are unknown for {} processes with CAP_IPC_LOCK whose open files \
                 the agent may not read (ptrace access, CAP_SYS_PTRACE): this kernel counts their io_uring buffers \
                 only in the rings' fdinfo (pincg_preexisting_scan_complete 0); first: {}",
                unreadable.len(),
                unreadable[0]
            );
        }
        Preexisting { processes, complete: Some(unreadable.is_empty()) }
    }

    /// Whether the scan at start read every process; `None` if none ran.
    pub fn complete(&self) -> Option<bool> {
        self.complete
    }

    /// Look at the same processes again: released pins and exited
    /// processes drop out. New processes are not added (the ledger sees
    /// their pins).
    pub fn refresh(&mut self) {
        self.processes.retain(|pid, entry| match Process::new(*pid).ok().map(|p| pinned(&p)) {
            Some(Pinned::Bytes(cgroup, bytes)) => {
                *entry = (cgroup, entry.1.min(bytes));
                true
            }
            _ => false,
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

/// What one process holds from before the ledger.
enum Pinned {
    /// Its cgroup v2 path and pinned + locked bytes.
    Bytes(String, u64),
    /// It may hold io_uring buffers counted nowhere the agent may read.
    Unreadable(String),
    Nothing,
}

/// The process's pinned + locked bytes. 7.x charges the io_uring buffers
/// of a CAP_IPC_LOCK task nowhere (VmPin stays 0) but its rings' fdinfo
/// lists them; VmPin already holds them on 6.x and for other tasks, so the
/// larger of the two counts. Such a task's open files need ptrace access:
/// without it, its pins are unknown.
fn pinned(process: &Process) -> Pinned {
    let Ok(status) = process.status() else { return Pinned::Nothing };
    let cgroup = || process.cgroups().ok()?.into_iter().find(|c| c.hierarchy == 0).map(|c| c.pathname);
    let vmpin = status.vmpin.unwrap_or(0) * 1024;
    let buffers = match io_uring_buffers(process.pid) {
        Some(bytes) => bytes,
        None if status.capeff & CAP_IPC_LOCK != 0 && io_uring_outside_vmpin() => {
            return cgroup().map_or(Pinned::Nothing, Pinned::Unreadable);
        }
        None => 0,
    };
    let bytes = status.vmlck.unwrap_or(0) * 1024 + vmpin.max(buffers);
    match cgroup() {
        Some(cgroup) if bytes > 0 => Pinned::Bytes(cgroup, bytes),
        _ => Pinned::Nothing,
    }
}

/// Whether this kernel leaves a CAP_IPC_LOCK task's io_uring buffers out
/// of VmPin (7.0 and later).
fn io_uring_outside_vmpin() -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    release.split('.').next().and_then(|major| major.trim().parse::<u32>().ok()).is_some_and(|major| major >= 7)
}

/// Bytes of the buffers registered on the io_uring rings process `pid` has
/// open (from their fdinfo), page-granular as the ledger counts them;
/// `None` if its open files may not be read.
fn io_uring_buffers(pid: i32) -> Option<u64> {
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let bytes = fds
        .flatten()
        .filter(|fd| fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:[io_uring]"))
        .filter_map(|fd| fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy())).ok())
        .map(|fdinfo| registered_buffer_bytes(&fdinfo))
        .sum();
    Some(bytes)
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
