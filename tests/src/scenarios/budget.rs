//! The hierarchical budget at the refusal points (VFIO MAP_DMA, RDMA REG_MR
//! ioctl, AF_XDP umem): ENOMEM at exactly the byte where the budget ends,
//! decided in BPF; ancestors bind; monitor mode refuses nothing but counts;
//! bad limit files leave the limit in force.

use anyhow::{ensure, Result};

use crate::devices::vfio_edu_group;
use crate::rdma_setup::soft_roce;
use crate::scenario::{expect_hook, expect_metric, io_uring_refused, pincg, step, Agent, Cgroup, Workload};

const MIB: u64 = 1 << 20;

pub fn run() -> Result<()> {
    let parent = Cgroup::create("pincg-budget")?;
    let vm = Cgroup::create("pincg-budget/vm")?;
    let sibling = Cgroup::create("pincg-budget/sibling")?;
    let _agent = Agent::start_with(&["--mode", "enforce"])?;
    let group = vfio_edu_group()?.to_string_lossy().into_owned();
    let rdma = soft_roce()?;
    expect_hook("vfio:refuse", 1)?;
    expect_hook("rdma:refuse", 1)?;
    expect_hook("xdp:refuse", 1)?;
    expect_hook("rdma:register", 1)?;

    step("pincg probe tells which enforcement each source gets on this kernel");
    let probe = pincg(&["probe"])?;
    print!("{probe}");
    let (_, io_uring) = io_uring_refused();
    for line in ["vfio       refuse", "rdma       refuse", "xdp        refuse", io_uring, "iommufd    none"] {
        ensure!(probe.lines().any(|l| l == line), "probe lacks {line:?}");
    }

    step("pincg set puts an 80 MiB budget in force");
    println!("   {}", pincg(&["set", "/pincg-budget/vm", "max", "80M"])?.trim());
    vm.expect_file("pins.max", "83886080\n")?;

    step("VFIO: 32 + 32 MiB are mapped, the next 32 MiB is refused before pinning, 16 MiB fits exactly");
    let mut qemu = Workload::spawn("vm-qemu", &vm, &["vfio"])?;
    qemu.run(&format!("open {group}"))?;
    qemu.run("map 0x10000000 32M")?;
    qemu.run("map 0x20000000 32M")?;
    qemu.expect_err("map 0x30000000 32M", "Cannot allocate memory")?;
    vm.expect_current(64 * MIB)?;
    qemu.run("map 0x40000000 16M")?;
    vm.expect_current(80 * MIB)?;
    vm.expect_file("pins.events", "high 0\nmax 1\n")?;
    vm.expect_file("pins.events.local", "high 0\nmax 1\n")?;
    vm.expect_file("pins.peak", &format!("{}\n", 80 * MIB))?;
    expect_metric("pincg_refusals_total{outcome=\"refused\",source=\"vfio\"} 1")?;

    step("RDMA: a full budget refuses ibv_reg_mr (the REG_MR ioctl) with ENOMEM");
    let mut mr = Workload::spawn("vm-mr", &vm, &["rdma"])?;
    mr.run(&format!("open {rdma}"))?;
    mr.expect_err("reg 4M", "Cannot allocate memory")?;
    vm.expect_current(80 * MIB)?;

    step("the parent's 96 MiB binds the sibling, which has no limit of its own (AF_XDP)");
    println!("   {}", pincg(&["set", "/pincg-budget", "max", "96M"])?.trim());
    let mut xsk = Workload::spawn("sibling-xsk", &sibling, &["xdp"])?;
    xsk.run("socket")?;
    xsk.expect_err("umem 32M", "Cannot allocate memory")?;
    xsk.run("umem 16M")?;
    parent.expect_current(96 * MIB)?;
    parent.expect_file("pins.events.local", "high 0\nmax 1\n")?;
    parent.expect_file("pins.events", "high 0\nmax 3\n")?;

    step("lowering a limit below usage is never refused; it stops new pins");
    println!("   {}", pincg(&["set", "/pincg-budget/vm", "max", "64M"])?.trim());
    vm.expect_current(80 * MIB)?;
    qemu.expect_err("map 0x50000000 4M", "Cannot allocate memory")?;

    step("monitor mode refuses nothing and counts what it would have refused");
    println!("   {}", pincg(&["mode", "monitor"])?.trim());
    qemu.run("map 0x50000000 4M")?;
    vm.expect_current(84 * MIB)?;
    expect_metric("pincg_refusals_total{outcome=\"would_refuse\",source=\"vfio\"} 1")?;
    println!("   {}", pincg(&["mode", "enforce"])?.trim());

    step("bad limit files are reported with their path and leave the limit in force");
    let max_file = vm.mirror("pins.max");
    for garbage in ["lots", "-5", "18446744073709551616", "64Q"] {
        std::fs::write(&max_file, garbage)?;
        expect_metric_growth()?;
        qemu.expect_err("map 0x60000000 4M", "Cannot allocate memory")?;
    }
    let status = pincg(&["status", "--json"])?;
    ensure!(status.contains("\"max\": \"67108864\""), "the 64 MiB limit is no longer in force:\n{status}");

    step("releasing returns the budget");
    qemu.run("close")?;
    xsk.run("close")?;
    vm.expect_current(0)?;
    parent.expect_current(0)?;
    Ok(())
}

/// Each bad file adds one to `pincg_limit_errors_total`.
fn expect_metric_growth() -> Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let next = SEEN.fetch_add(1, Ordering::SeqCst) + 1;
    expect_metric(&format!("pincg_limit_errors_total {next}"))
}
