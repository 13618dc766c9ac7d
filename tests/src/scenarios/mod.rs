//! The guest scenarios, one module each; `pincg-scenario <name>` runs one.

pub mod actions;
pub mod admission;
pub mod as_written;
pub mod bench;
pub mod budget;
pub mod dedup;
pub mod delegation;
pub mod demo;
pub mod escape;
pub mod exhaustion;
pub mod hostile;
pub mod io_uring;
pub mod iommufd;
pub mod lifecycle;
pub mod lsm;
pub mod memlock;
pub mod node_budget;
pub mod nri;
pub mod owner;
pub mod preexisting;
pub mod prometheus;
pub mod rdma;
pub mod reads;
pub mod refusal;
pub mod scale;
pub mod shipped;
pub mod storm;
pub mod upgrade;
pub mod usage_room;
pub mod vduse;
pub mod verifier_budget;
pub mod vfio;
pub mod xdp;

/// A scenario: it prints its steps and fails with what went wrong.
pub type Scenario = fn() -> anyhow::Result<()>;

/// Every scenario by name.
pub const ALL: &[(&str, Scenario)] = &[
    ("io-uring", io_uring::run),
    ("refuses-lockdown", refusal::lockdown),
    ("demo", demo::run),
    ("xdp", xdp::run),
    ("vfio", vfio::run),
    ("vduse", vduse::run),
    ("owner-not-current", owner::run),
    ("rdma", rdma::run),
    ("budget", budget::run),
    ("admission", admission::run),
    ("dedup", dedup::run),
    ("node-budget", node_budget::run),
    ("nri", nri::run),
    ("memlock", memlock::run),
    ("actions", actions::run),
    ("iommufd", iommufd::run),
    ("storm", storm::run),
    ("scale", scale::run),
    ("hostile", hostile::run),
    ("escape", escape::run),
    ("exhaustion", exhaustion::run),
    ("usage-room", usage_room::run),
    ("lifecycle", lifecycle::run),
    ("preexisting", preexisting::run),
    ("prometheus", prometheus::run),
    ("shipped-unit", shipped::unit),
    ("shipped-pod", shipped::pod),
    ("bench", bench::run),
    ("reads-never-write", reads::run),
    ("limits-as-written", as_written::run),
    ("delegation", delegation::run),
    ("lsm-inactive", lsm::run),
    ("upgrade", upgrade::run),
    ("verifier-budget", verifier_budget::run),
];
