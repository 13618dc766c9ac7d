//! Deduplication: a VM process whose 64 MiB of guest RAM is mapped by two
//! VFIO containers (one per assigned device, as behind a vIOMMU) and
//! registered with io_uring is charged 64 MiB once, not three times, and the
//! second container's MAP_DMA of the same RAM fits a 64 MiB budget.

use anyhow::{ensure, Context, Result};

use crate::devices::vfio_edu_groups;
use crate::scenario::{expect_hook, expect_no_drift, pincg, step, Agent, Cgroup, Workload};

const MIB: u64 = 1 << 20;

pub fn run() -> Result<()> {
    let vm = Cgroup::create("pincg-dedup-vm")?;
    let _agent = Agent::start_with(&["--mode", "enforce"])?;
    let groups = vfio_edu_groups()?;
    ensure!(groups.len() >= 2, "two edu devices needed, found {}", groups.len());
    expect_hook("vfio:refuse", 1)?;
    expect_hook("vfio:pin", 1)?;

    step("a 64 MiB budget for the VM");
    println!("   {}", pincg(&["set", "/pincg-dedup-vm", "max", "64M"])?.trim());
    let mut qemu = Workload::spawn("vm-qemu", &vm, &["vm"])?;
    for (n, group) in groups.iter().take(2).enumerate() {
        qemu.run(&format!("vfio {n} open {}", group.display()))?;
    }

    step("container 0 maps the 64 MiB of guest RAM");
    qemu.run("vfio 0 map-reuse 0x0 64M")?;
    vm.expect_current(64 * MIB)?;
    vm.expect_stat(&[("vfio", 64 * MIB)])?;

    step("container 1 maps the same RAM: admitted under the full budget, nothing new counted");
    qemu.run("vfio 1 map-reuse 0x0 64M")?;
    vm.expect_current(64 * MIB)?;
    vm.expect_stat(&[("vfio", 128 * MIB), ("double_pinned", 64 * MIB)])?;

    step("io_uring registers the same RAM: still 64 MiB");
    qemu.run("io_uring ring")?;
    qemu.run("io_uring register-reuse 64M")?;
    vm.expect_current(64 * MIB)?;
    vm.expect_stat(&[("vfio", 128 * MIB), ("io_uring", 64 * MIB), ("double_pinned", 128 * MIB)])?;
    vm.expect_file("pins.peak", &format!("{}\n", 64 * MIB))?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", qemu.pid()))?;
    let locked = status.lines().find(|l| l.starts_with("VmLck:")).context("no VmLck")?;
    println!("   the kernel's own accounting: {locked} (one charge per VFIO container)");
    ensure!(locked.split_whitespace().nth(1) == Some("131072"), "expected VmLck 131072 kB: {locked}");

    step("new memory is still refused at the budget");
    qemu.expect_err("vfio 0 map 0x10000000 4M", "Cannot allocate memory")?;
    vm.expect_file("pins.events", "high 0\nmax 1\n")?;
    vm.expect_current(64 * MIB)?;

    step("both containers map and unmap 4 MiB of the RAM again at once, 200 times each: no reference lost");
    qemu.run("churn 200 64M 4M")?;
    vm.expect_current(64 * MIB)?;
    vm.expect_stat(&[("vfio", 128 * MIB), ("io_uring", 64 * MIB), ("double_pinned", 128 * MIB)])?;
    expect_no_drift()?;

    step("releases: the RAM stays counted until its last pin goes");
    qemu.run("vfio 0 close")?;
    vm.expect_current(64 * MIB)?;
    vm.expect_stat(&[("vfio", 64 * MIB), ("io_uring", 64 * MIB), ("double_pinned", 64 * MIB)])?;
    qemu.run("io_uring unregister")?;
    vm.expect_current(64 * MIB)?;
    vm.expect_stat(&[("vfio", 64 * MIB)])?;
    qemu.run("vfio 1 close")?;
    vm.expect_current(0)?;
    vm.expect_stat(&[])?;
    expect_no_drift()?;
    qemu.exit()
}
