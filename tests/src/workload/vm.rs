//! A VM's pins in one process, as QEMU makes them: its guest RAM mapped by
//! several VFIO containers (one per assigned device, as with a vIOMMU) and
//! registered with io_uring. Use the `*-reuse` commands so every source pins
//! the same pages (`super::reusable_memory`).
//!
//! Commands:
//! - `vfio <n> <command> <args>...`: a [`Vfio`] command on container `n`
//!   (0, 1, ...; made on first use), e.g. `vfio 1 map-reuse 0x0 64M`.
//! - `io_uring <command> <args>...`: a [`Rings`] command, e.g.
//!   `io_uring register-reuse 64M`.

use std::os::fd::RawFd;

use super::io_uring::Rings;
use super::vfio::Vfio;
use super::Pinner;

/// Containers beyond this are a typo in a scenario.
const MAX_CONTAINERS: usize = 8;

#[derive(Default)]
pub struct Vm {
    containers: Vec<Vfio>,
    rings: Rings,
}

impl Pinner for Vm {
    fn command(&mut self, command: &str, args: &[&str]) -> Result<(), String> {
        match (command, args) {
            ("vfio", [n, command, args @ ..]) => {
                let n: usize = n.parse().map_err(|e| format!("container {n:?}: {e}"))?;
                if n >= MAX_CONTAINERS {
                    return Err(format!("container {n}: at most {MAX_CONTAINERS}"));
                }
                if self.containers.len() <= n {
                    self.containers.resize_with(n + 1, Vfio::default);
                }
                self.containers[n].command(command, args)
            }
            ("io_uring", [command, args @ ..]) => self.rings.command(command, args),
            _ => Err(format!("unknown vm command {command:?} {args:?}")),
        }
    }

    /// The first container's fd.
    fn pinning_fd(&self) -> Option<RawFd> {
        self.containers.first().and_then(Vfio::pinning_fd)
    }
}
