//! A VM's pins in one process, as QEMU makes them: its guest RAM mapped by
//! several VFIO containers (one per assigned device, as with a vIOMMU) and
//! registered with io_uring and as an RDMA memory region. Use the `*-reuse`
//! commands so every source pins the same pages (`super::reusable_memory`).
//!
//! Commands:
//! - `vfio <n> <command> <args>...`: a [`Vfio`] command on container `n`
//!   (0, 1, ...; made on first use), e.g. `vfio 1 map-reuse 0x0 64M`.
//! - `io_uring <command> <args>...`: a [`Rings`] command, e.g.
//!   `io_uring register-reuse 64M`.
//! - `rdma <command> <args>...`: an [`Rdma`] command, e.g. `rdma reg-reuse 64M`.
//! - `churn ROUNDS RAM SIZE`: every open container at once, one thread each,
//!   maps the first SIZE bytes of the reusable RAM bytes of guest RAM at
//!   IOVA 1 GiB and unmaps them, ROUNDS times: the same pages added and
//!   removed from several CPUs.

use std::os::fd::RawFd;

use super::io_uring::Rings;
use super::rdma::Rdma;
use super::vfio::Vfio;
use super::Pinner;

/// Where `churn` maps, clear of the scenarios' other maps.
const CHURN_IOVA: u64 = 1 << 30;

/// Containers beyond this are a typo in a scenario.
const MAX_CONTAINERS: usize = 8;

#[derive(Default)]
pub struct Vm {
    containers: Vec<Vfio>,
    rings: Rings,
    rdma: Rdma,
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
            ("rdma", [command, args @ ..]) => self.rdma.command(command, args),
            ("churn", [rounds, ram, size]) => {
                let rounds = rounds.parse().map_err(|_| format!("bad count {rounds:?}"))?;
                let (ram, size) = (super::parse_size(ram)?, super::parse_size(size)?);
                if size > ram {
                    return Err(format!("churn: {size} bytes of {ram}"));
                }
                let addr = super::reusable_memory(ram)? as usize;
                std::thread::scope(|s| {
                    let threads: Vec<_> = self
                        .containers
                        .iter()
                        .map(|c| s.spawn(move || c.churn(CHURN_IOVA, addr, size, rounds)))
                        .collect();
                    threads
                        .into_iter()
                        .try_for_each(|t| t.join().map_err(|_| "a churning thread panicked".to_string())?)
                })
            }
            _ => Err(format!("unknown vm command {command:?} {args:?}")),
        }
    }

    /// The first container's fd.
    fn pinning_fd(&self) -> Option<RawFd> {
        self.containers.first().and_then(Vfio::pinning_fd)
    }
}
