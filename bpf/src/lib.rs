//! pincg's kernel side: BPF programs (C, in `src/bpf/`) and their loader.
//!
//! * [`preflight`] says, in one line, why a kernel cannot run pincg.
//! * [`hooks`] chooses program variants from the running kernel's BTF.
//! * [`loader`] loads, attaches and pins them under `/sys/fs/bpf/pincg`, or
//!   adopts what a previous agent left pinned.
//! * [`ledger`] reads the pinned maps: per-cgroup usage, live pin objects
//!   and health counters.
//! * [`prog_stats`] reads how often the kernel skipped pincg's programs.

pub mod btf;
mod error;
pub mod hooks;
pub mod ledger;
pub mod loader;
mod modules;
pub mod paths;
pub mod preflight;
pub mod prog_stats;
mod skel;

pub use error::Error;
