use std::path::PathBuf;

/// Everything that can go wrong on the kernel side, each naming the file,
/// hook or map involved and, where there is one, what to do about it.
///
/// A variant with a `source` leaves it out of its message: the cause is
/// printed by whoever prints the chain (anyhow's `{:#}` at the binary's
/// edge), once. Printed alone, a message ends where its cause would follow.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("this kernel refuses pincg's BPF programs: {cause}")]
    NoTracing { cause: String },
    #[error("kernel BTF is missing ({path} not found): pincg needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")]
    NoBtf { path: PathBuf },
    #[error("kernel BTF at {path} could not be read")]
    BadBtf { path: PathBuf, source: libbpf_rs::Error },
    #[error(
        "missing capability: pincg needs CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON, \
         to load tracing programs (effective set {effective:#x}); run it as root"
    )]
    Capability { effective: u64 },
    #[error(
        "{path} is not a BPF filesystem and mounting one there failed (mount it with `mount -t bpf bpf /sys/fs/bpf`)"
    )]
    NoBpffs { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("hook {hook}: {reason}")]
    HookUnavailable { hook: &'static str, reason: String },
    #[error(
        "pinned map {map} has another layout than this pincg's ({difference}): the pincg programs \
         running now keep counting with it, unchanged. This build cannot run on that ledger; to \
         run it anyway, `pincg unload` first: it detaches pincg and drops every charge (pins held \
         now stay uncounted until they are released and pinned again), the limits in BPF (the \
         agent puts them back from its mirror files) and the peaks, events and counters"
    )]
    LayoutMismatch { map: String, difference: String },
    #[error("the layout of map {map} could not be read")]
    LayoutUnreadable { map: String, source: libbpf_rs::Error },
    #[error("BPF object {object}")]
    Object { object: &'static str, source: libbpf_rs::Error },
    #[error("pinned BPF state {path}")]
    Pinned { path: PathBuf, source: libbpf_rs::Error },
    #[error("no pincg ledger pinned at {path}: start the agent with `pincg agent`")]
    NotRunning { path: PathBuf },
    #[error("loading the ledger's reader (BPF map iterators: reading the ledger needs CAP_BPF and CAP_PERFMON)")]
    ReaderLoad { source: libbpf_rs::Error },
    #[error("reading map {map} through its iterator read_{map}")]
    Reader { map: &'static str, source: libbpf_rs::Error },
    #[error(
        "cgroup {cgroup}: no room for its usage entry (usage map of {capacity} entries full, its reserve \
         used up): its limit is not put in force"
    )]
    UsageFull { cgroup: u64, capacity: u32, source: libbpf_rs::Error },
    #[error("map {map}: entry of {found} bytes, expected {expected}")]
    EntrySize { map: &'static str, found: usize, expected: usize },
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    /// Each cause once in the chain anyhow prints at the binary's edge.
    #[test]
    fn chains_name_each_cause_once() {
        let eperm = || io::Error::from_raw_os_error(libc::EPERM);
        let cases: Vec<(Error, &str)> = vec![
            (
                Error::Io { path: "/proc/self/status".into(), source: eperm() },
                "cannot read /proc/self/status: Operation not permitted (os error 1)",
            ),
            (
                Error::NoBpffs { path: "/sys/fs/bpf".into(), source: eperm() },
                "/sys/fs/bpf is not a BPF filesystem and mounting one there failed \
                 (mount it with `mount -t bpf bpf /sys/fs/bpf`): Operation not permitted (os error 1)",
            ),
            (
                Error::Pinned { path: "limits".into(), source: libbpf_rs::Error::from(eperm()) },
                "pinned BPF state limits: Operation not permitted (os error 1)",
            ),
            (
                Error::BadBtf { path: "/sys/kernel/btf/vmlinux".into(), source: libbpf_rs::Error::from(eperm()) },
                "kernel BTF at /sys/kernel/btf/vmlinux could not be read: Operation not permitted (os error 1)",
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(format!("{:#}", anyhow::Error::new(error).context("starting")), format!("starting: {expected}"));
        }
    }
}
