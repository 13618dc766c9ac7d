//! The guest scenarios, one module each; `pincg-scenario <name>` runs one.

pub mod io_uring;

/// Every scenario by name.
pub const ALL: &[(&str, fn() -> anyhow::Result<()>)] = &[("io-uring", io_uring::run)];
