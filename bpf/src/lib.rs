//! pincg's kernel side: BPF programs (C, in `src/bpf/`) and their loader.
//!
//! * [`preflight`] says, in one line, why a kernel cannot run pincg.
//! * [`hooks`] chooses program variants from the running kernel's BTF.
//! * [`loader`] loads, attaches and pins them under `/sys/fs/bpf/pincg`,
//!   adopts what a previous agent of this build left pinned, or replaces the
//!   programs of another build keeping the ledger.
//! * [`layout`] says whether a map in the kernel has this build's layout.
//! * [`ledger`] reads the pinned maps: per-cgroup usage, live pin objects
//!   and health counters (whole maps through the iterators of `reader`).
//! * [`prog_stats`] reads how often the kernel skipped pincg's programs.

pub mod btf;
mod error;
pub mod hooks;
pub mod layout;
pub mod ledger;
pub mod loader;
mod modules;
pub mod paths;
pub mod preflight;
pub mod prog_stats;
mod reader;
mod running;
mod skel;

pub use error::Error;
