//! pincg's test support: the QEMU guest harness (host side), the in-guest
//! scenario toolkit, and the pinning workloads.

pub mod builds;
pub mod cri;
pub mod devices;
pub mod guest;
pub mod libvirt;
pub mod rdma_setup;
pub mod scenario;
pub mod scenarios;
pub mod shipped;
pub mod workload;
