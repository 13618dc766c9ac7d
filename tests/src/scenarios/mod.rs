//! The guest scenarios, one module each; `pincg-scenario <name>` runs one.

pub mod actions;
pub mod bench;
pub mod budget;
pub mod dedup;
pub mod demo;
pub mod escape;
pub mod exhaustion;
pub mod io_uring;
pub mod hostile;
pub mod iommufd;
pub mod lifecycle;
pub mod node_budget;
pub mod owner;
pub mod preexisting;
pub mod prometheus;
pub mod rdma;
pub mod storm;
pub mod refusal;
pub mod scale;
pub mod vduse;
pub mod vfio;
pub mod xdp;

/// Every scenario by name.
pub const ALL: &[(&str, fn() -> anyhow::Result<()>)] = &[
    ("io-uring", io_uring::run),
    ("refuses-lockdown", refusal::lockdown),
    ("demo", demo::run),
    ("xdp", xdp::run),
    ("vfio", vfio::run),
    ("vduse", vduse::run),
    ("owner-not-current", owner::run),
    ("rdma", rdma::run),
    ("budget", budget::run),
    ("dedup", dedup::run),
    ("node-budget", node_budget::run),
    ("actions", actions::run),
    ("iommufd", iommufd::run),
    ("storm", storm::run),
    ("scale", scale::run),
    ("hostile", hostile::run),
    ("escape", escape::run),
    ("exhaustion", exhaustion::run),
    ("lifecycle", lifecycle::run),
    ("preexisting", preexisting::run),
    ("prometheus", prometheus::run),
    ("bench", bench::run),
];
