//! pincg as an NRI (Node Resource Interface) plugin of the container
//! runtime: pods' budgets from their annotations and the node policy, in
//! force before their first container is created. NRI API v0.6.1
//! (containerd 1.7; later runtimes speak a superset).

pub mod api;
mod cgroup;
pub mod plugin;
pub mod policy;
mod session;
mod wire;

pub use plugin::{Plugin, Status};
pub use session::run;
