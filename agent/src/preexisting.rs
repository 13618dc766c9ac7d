//! Pins made before pincg's ledger existed: the BPF programs never saw
//! them, so they are in no cgroup's pins.current. At start with a fresh
//! ledger the agent finds them from each process's own counters
//! (`VmPin` + `VmLck` of /proc/<pid>/status: io_uring and RDMA pins count
//! in VmPin, VFIO in VmLck; mlock()ed memory also counts in VmLck, so this
//! is an upper bound) and reports them per cgroup, apart from the ledger,
//! until those processes release them or exit.

use std::collections::HashMap;

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

/// The process's cgroup v2 path and pinned + locked bytes, if any.
fn pinned(process: &Process) -> Option<(String, u64)> {
    let status = process.status().ok()?;
    let bytes = (status.vmpin.unwrap_or(0) + status.vmlck.unwrap_or(0)) * 1024;
    if bytes == 0 {
        return None;
    }
    let cgroup = process.cgroups().ok()?.into_iter().find(|c| c.hierarchy == 0)?.pathname;
    Some((cgroup, bytes))
}
