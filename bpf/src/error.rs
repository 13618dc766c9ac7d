use std::path::PathBuf;

/// Everything that can go wrong on the kernel side, each naming the file,
/// hook or map involved and, where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("this kernel refuses pincg's BPF programs: {cause}")]
    NoTracing { cause: String },
    #[error("kernel BTF is missing ({path} not found): pincg needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")]
    NoBtf { path: PathBuf },
    #[error("kernel BTF at {path} could not be read: {source}")]
    BadBtf { path: PathBuf, source: libbpf_rs::Error },
    #[error(
        "missing capability: pincg needs CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON, \
         to load tracing programs (effective set {effective:#x}); run it as root"
    )]
    Capability { effective: u64 },
    #[error("{path} is not a BPF filesystem and mounting one there failed ({source}): mount it with `mount -t bpf bpf /sys/fs/bpf`")]
    NoBpffs { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("hook {hook}: {reason}")]
    HookUnavailable { hook: &'static str, reason: String },
    #[error(
        "pinned map {path} has (key, value, entries) sizes {found:?}, this pincg needs {wanted:?}: \
         an agent of another version left it; `pincg unload` drops the old ledger"
    )]
    LayoutMismatch { path: PathBuf, found: (u32, u32, u32), wanted: (u32, u32, u32) },
    #[error("pinned BPF state {path}: {source}")]
    Pinned { path: PathBuf, source: libbpf_rs::Error },
    #[error("no pincg ledger pinned at {path}: start the agent with `pincg agent`")]
    NotRunning { path: PathBuf },
    #[error("map {map}: entry of {found} bytes, expected {expected}")]
    EntrySize { map: &'static str, found: usize, expected: usize },
}
