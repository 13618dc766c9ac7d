//! A kernel booted without `bpf` in `lsm=` (Debian's default list without
//! it, as on distributions that do not enable the BPF LSM): an LSM program
//! attaches but never runs, so the ioctl refusal points (VFIO, iommufd,
//! RDMA, VDUSE) do nothing. `pincg probe` says so for each hook and each
//! source, the agent's enforcement metric says the same, and a VFIO map
//! over pins.max is indeed admitted (and counted as overruns).

use anyhow::{ensure, Result};

use crate::devices::vfio_edu_group;
use crate::scenario::{expect_hook, expect_metric, pincg, step, Agent, Cgroup, Workload};

const MIB: u64 = 1 << 20;
const LSM_INACTIVE: &str =
    "unavailable: the BPF LSM is not active (bpf is not in /sys/kernel/security/lsm): an LSM program attaches but never runs";

pub fn run() -> Result<()> {
    let lsm = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    println!("   /sys/kernel/security/lsm: {lsm}");
    ensure!(!lsm.split(',').any(|m| m.trim() == "bpf"), "booted with the BPF LSM active: {lsm}");
    let vm = Cgroup::create("pincg-lsm/vm")?;
    let _agent = Agent::start_with(&["--mode", "enforce"])?;
    let group = vfio_edu_group()?.to_string_lossy().into_owned();
    expect_hook("vfio:pin", 1)?;

    step("pincg probe: the LSM refusal points are unavailable, with the reason; VFIO is enforced after the fact");
    let probe = pincg(&["probe"])?;
    print!("{probe}");
    let policy = format!(
        "bpf lsm    inactive: the BPF LSM is not active (/sys/kernel/security/lsm is \"{}\", without bpf)",
        lsm.trim()
    );
    ensure!(probe.lines().any(|l| l.starts_with(&policy)), "probe lacks {policy:?}");
    for hook in ["vfio:refuse", "iommufd:refuse", "rdma:refuse", "vduse:refuse"] {
        let line = format!("{hook:<18} {LSM_INACTIVE}");
        ensure!(probe.lines().any(|l| l == line), "probe lacks {line:?}");
    }
    ensure!(
        probe.lines().any(|l| l.starts_with("xdp:refuse ") && l.ends_with("enforce_setsockopt")),
        "xdp:refuse is a cgroup program, not LSM"
    );
    let because = format!("           because vfio:refuse {LSM_INACTIVE}");
    ensure!(
        probe.contains(&format!("vfio       act after\n{because}\n")),
        "probe lacks vfio's act after and its reason"
    );
    ensure!(probe.lines().any(|l| l == "xdp        refuse"), "xdp is still refused");

    step("the agent's metrics say the same");
    expect_hook("vfio:refuse", 0)?;
    expect_metric("pincg_source_enforcement{enforcement=\"act after\",source=\"vfio\"} 1")?;
    expect_metric("pincg_source_enforcement{enforcement=\"refuse\",source=\"xdp\"} 1")?;

    step("and it is true: a 32 MiB VFIO map over a 16 MiB pins.max is admitted, counted as an overrun");
    println!("   {}", pincg(&["set", "/pincg-lsm/vm", "max", "16M"])?.trim());
    let mut qemu = Workload::spawn("vm-qemu", &vm, &["vfio"])?;
    qemu.run(&format!("open {group}"))?;
    qemu.run("map 0x10000000 32M")?;
    vm.expect_current(32 * MIB)?;
    expect_metric("pincg_refusals_total{outcome=\"refused\",source=\"vfio\"} 0")?;
    // How many overruns one MAP_DMA counts (one per pinned chunk today, one
    // per request is the admission work's aim) is not this scenario's point.
    let metrics = crate::scenario::http_get("/metrics")?;
    let overruns: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pincg_overruns_total{source=\"vfio\"} ")?.parse().ok())
        .unwrap_or(0);
    ensure!(overruns > 0, "the admitted map over pins.max counted no overrun");
    println!("   ok {overruns} vfio overruns counted");
    qemu.run("close")?;
    vm.expect_current(0)?;
    Ok(())
}
