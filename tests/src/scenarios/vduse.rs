//! VDUSE umems: exact bytes under `other`, charged to the registering
//! task's cgroup, returned by DEREG and by the device fd's release at exit;
//! a budget refuses VDUSE_IOTLB_REG_UMEM before anything is pinned.
//!
//! The workload is the userspace side of a VDUSE virtio-net device. The
//! kernel takes a umem only for the bounce range of a device on the vdpa
//! bus whose bounce map exists (vduse_dev_reg_umem), and the bounce map is
//! made by the first streaming DMA map of the device's driver: the device
//! goes on the bus with `vdpa dev add` (virtio_vdpa binds virtio-net to it),
//! and bringing the interface up maps its receive buffers.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};

use crate::scenario::{expect_hook, expect_metric, expect_no_drift, pincg, skip, step, tool, Agent, Cgroup, Workload};

const MIB: u64 = 1 << 20;
const DEVICE: &str = "pincg-vduse0";
/// VDUSE_BOUNCE_SIZE: a umem must cover exactly the bounce range.
const BOUNCE: &str = "64M";

pub fn run() -> Result<()> {
    if tool("modinfo", &["vduse"]).is_err() {
        return without_vduse();
    }
    for module in ["vduse", "virtio_vdpa", "virtio_net"] {
        tool("modprobe", &[module])?;
    }
    let cg = Cgroup::create("pincg-vduse")?;
    let _agent = Agent::start_with(&["--mode", "enforce"])?;
    expect_hook("vduse:register", 1)?;
    expect_hook("vduse:release", 1)?;

    step("pincg probe: other is counted and refused at VDUSE_IOTLB_REG_UMEM");
    let probe = pincg(&["probe"])?;
    print!("{probe}");
    ensure!(probe.lines().any(|l| l == "other      refuse"), "probe lacks \"other      refuse\"");

    step("a VDUSE virtio-net device on the vdpa bus, its interface up");
    let mut daemon = Workload::spawn("vduse", &cg, &["vduse"])?;
    daemon.run(&format!("create {DEVICE}"))?;
    tool("vdpa", &["dev", "add", "name", DEVICE, "mgmtdev", "vduse"])?;
    let interface = interface_of(DEVICE)?;
    tool("ip", &["link", "set", &interface, "up"])?;
    println!("   {DEVICE} is {interface}");

    step("RLIMIT_MEMLOCK 32 MiB: the kernel refuses a 64 MiB umem, nothing is charged");
    daemon.run("memlock 32M")?;
    daemon.expect_err(&format!("reg {BOUNCE}"), "Cannot allocate memory")?;
    cg.expect_stat(&[])?;

    step("RLIMIT_MEMLOCK 64 MiB: the 64 MiB umem is charged to its cgroup under other");
    daemon.run("memlock 64M")?;
    daemon.run(&format!("reg {BOUNCE}"))?;
    cg.expect_current(64 * MIB)?;
    cg.expect_stat(&[("other", 64 * MIB)])?;
    expect_no_drift()?;

    step("DEREG returns it");
    daemon.run(&format!("dereg {BOUNCE}"))?;
    cg.expect_current(0)?;
    expect_no_drift()?;

    step("a 32 MiB budget refuses the 64 MiB umem in BPF (ENOMEM), 64 MiB fits exactly");
    println!("   {}", pincg(&["set", &format!("/{}", cg.rel), "max", "32M"])?.trim());
    cg.expect_file("pins.max", &format!("{}\n", 32 * MIB))?;
    daemon.expect_err(&format!("reg {BOUNCE}"), "Cannot allocate memory")?;
    expect_metric("pincg_refusals_total{outcome=\"refused\",source=\"other\"} 1")?;
    cg.expect_stat(&[])?;
    expect_no_drift()?;
    println!("   {}", pincg(&["set", &format!("/{}", cg.rel), "max", "64M"])?.trim());
    cg.expect_file("pins.max", &format!("{}\n", 64 * MIB))?;

    step("a second umem stays charged while the device leaves the bus, and is returned at exit");
    daemon.run(&format!("reg {BOUNCE}"))?;
    cg.expect_stat(&[("other", 64 * MIB)])?;
    tool("ip", &["link", "set", &interface, "down"])?;
    tool("vdpa", &["dev", "del", DEVICE])?;
    println!("   {DEVICE} is off the vdpa bus");
    cg.expect_current(64 * MIB)?;
    daemon.exit()?;
    cg.expect_current(0)?;
    expect_no_drift()?;

    step("the device is destroyed");
    let mut control = Workload::spawn("vduse-control", &cg, &["vduse"])?;
    control.run(&format!("destroy {DEVICE}"))?;
    cg.expect_stat(&[])?;
    expect_no_drift()
}

/// A kernel without the vduse module (Debian 6.1): the agent says so, in
/// `pincg probe` with the reason and in the metrics, and `other` gets no
/// enforcement; nothing else of the scenario applies.
fn without_vduse() -> Result<()> {
    step("no vduse module on this kernel: probe and metrics name the degradation");
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").context("reading the kernel release")?;
    // The guest harness points the agent at the guest kernel's module trees.
    let trees = std::env::var("PINCG_MODULE_TREE").unwrap_or_else(|_| "/lib/modules".into());
    let _agent = Agent::start()?;
    expect_hook("vduse:register", 0)?;
    expect_hook("vduse:release", 0)?;
    expect_hook("vduse:refuse", 1)?;
    expect_metric("pincg_source_enforcement{enforcement=\"none\",source=\"other\"} 1")?;
    let probe = pincg(&["probe"])?;
    print!("{probe}");
    let reason = format!(
        "unavailable: module vduse is not built for this kernel (not in {trees}/{}/modules.dep nor modules.builtin)",
        release.trim()
    );
    for hook in ["vduse:register", "vduse:release"] {
        let line = format!("{hook:<18} {reason}");
        ensure!(probe.lines().any(|l| l == line), "probe lacks {line:?}");
    }
    ensure!(probe.lines().any(|l| l == "other      none"), "probe lacks \"other      none\"");
    skip("VDUSE umems", "this kernel has no vduse module (Debian builds CONFIG_VDPA_USER from 6.12 on)");
    Ok(())
}

/// The network interface virtio-net made for vdpa device `name`
/// (`/sys/bus/vdpa/devices/<name>/virtioN/net/<interface>`).
fn interface_of(name: &str) -> Result<String> {
    let device = Path::new("/sys/bus/vdpa/devices").join(name);
    let virtio: PathBuf = fs::read_dir(&device)
        .with_context(|| format!("listing {}", device.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("virtio")))
        .with_context(|| format!("no virtio device under {}: is virtio_vdpa bound?", device.display()))?;
    let net = virtio.join("net");
    fs::read_dir(&net)
        .with_context(|| format!("listing {}: did virtio-net bind?", net.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .with_context(|| format!("no interface in {}", net.display()))
}
