//! pincg's test support: the QEMU guest harness (host side), the in-guest
//! scenario toolkit, and the pinning workloads.

pub mod devices;
pub mod guest;
pub mod rdma_setup;
pub mod scenario;
pub mod scenarios;
pub mod workload;
