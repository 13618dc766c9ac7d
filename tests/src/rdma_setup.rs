//! Soft-RoCE in the guest: an `rdma_rxe` device on the virtio-net NIC of
//! `run-guest.sh --rdma-net` (a restricted user network: nothing leaves the
//! guest). Needs root and iproute2's `ip` and `rdma` in PATH.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::scenario::tool;
use crate::workload::rdma;

/// The RDMA device [`soft_roce`] creates.
pub const DEVICE: &str = "rxe0";

/// The address given to the NIC when it has none (QEMU's user network is
/// 10.0.2.0/24; restrict=on keeps it inside the guest).
const ADDRESS: &str = "10.0.2.15/24";

/// How long the device files may take to appear.
const APPEAR: Duration = Duration::from_secs(10);

/// Make sure the soft-RoCE device exists and libibverbs can use it; return
/// its name. Idempotent: what is already in place is left as it is.
pub fn soft_roce() -> Result<String> {
    // `modprobe` from PATH: in the guest it is the wrapper that knows where
    // the guest kernel's modules are. ib_uverbs (the /dev/infiniband/uverbsN
    // character devices) is a dependency of rdma_rxe up to 6.x, where it holds
    // ib_umem_get; from 7.x, with umem in ib_core, nothing loads it until
    // libibverbs' netlink query makes the kernel autoload it: load it here.
    tool("modprobe", &["rdma_rxe"])?;
    tool("modprobe", &["ib_uverbs"])?;
    let netdev = nic()?;
    tool("ip", &["link", "set", &netdev, "up"])?;
    if tool("ip", &["-o", "-4", "addr", "show", "dev", &netdev])?.trim().is_empty() {
        tool("ip", &["addr", "add", ADDRESS, "dev", &netdev])?;
    }
    let ibdev = Path::new("/sys/class/infiniband").join(DEVICE);
    if !ibdev.exists() {
        tool("rdma", &["link", "add", DEVICE, "type", "rxe", "netdev", &netdev])?;
    }
    let uverbs = wait_for_uverbs()?;
    println!("   soft-RoCE {DEVICE} on {netdev}, {uverbs}");

    // libibverbs lists a kernel device only if a provider from
    // /etc/libibverbs.d (here rxe.driver, from ibverbs-providers) claims it.
    let names = rdma::device_names().map_err(anyhow::Error::msg)?;
    if !names.iter().any(|name| name == DEVICE) {
        bail!("libibverbs does not list {DEVICE} (it lists {names:?}): is the rxe provider of ibverbs-providers installed?");
    }
    Ok(DEVICE.to_string())
}

/// The first network interface backed by a device: the virtio-net NIC (this
/// skips `lo` and any virtual interface a scenario made).
fn nic() -> Result<String> {
    let mut names: Vec<String> = fs::read_dir("/sys/class/net")
        .context("listing /sys/class/net")?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().join("device").exists())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().next().context("no network interface with a device: was the guest booted with --rdma-net?")
}

/// Wait until `DEVICE`'s uverbs character device exists; return its path.
pub fn wait_for_uverbs() -> Result<String> {
    let start = Instant::now();
    loop {
        if let Some(dev) = uverbs_of(DEVICE) {
            if Path::new(&dev).exists() {
                return Ok(dev);
            }
        }
        if start.elapsed() > APPEAR {
            bail!("no /dev/infiniband/uverbsN for {DEVICE} after {APPEAR:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `/dev/infiniband/uverbsN` of the RDMA device `ibdev`, once sysfs has it.
fn uverbs_of(ibdev: &str) -> Option<String> {
    fs::read_dir("/sys/class/infiniband_verbs").ok()?.filter_map(|entry| entry.ok()).find_map(|entry| {
        let owner = fs::read_to_string(entry.path().join("ibdev")).ok()?;
        (owner.trim() == ibdev).then(|| format!("/dev/infiniband/{}", entry.file_name().to_string_lossy()))
    })
}
