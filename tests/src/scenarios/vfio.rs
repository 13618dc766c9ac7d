//! VFIO type1 DMA maps through the emulated IOMMU and the `edu` device:
//! exact bytes under `vfio`, partial unmaps, container close, exit, root
//! and unprivileged pinners, and a map the kernel refuses part way.

use anyhow::Result;

use crate::devices::{allow_user, vfio_edu_group};
use crate::scenario::{expect_hook, expect_no_drift, step, Agent, Cgroup, Workload};

const MIB: u64 = 1 << 20;

pub fn run() -> Result<()> {
    let cg = Cgroup::create("pincg-vfio")?;
    let _agent = Agent::start()?;

    step("vfio-pci loads after the agent: the vfio hooks attach when the module appears");
    let group = vfio_edu_group()?;
    let group = group.to_string_lossy().into_owned();
    expect_hook("vfio:pin", 1)?;
    expect_hook("vfio:release", 1)?;

    step("root maps 64 MiB, then 4 x 16 MiB, and unmaps two of those");
    let mut root = Workload::spawn("root-vm", &cg, &["vfio"])?;
    root.run(&format!("open {group}"))?;
    root.run("map 0x100000 64M")?;
    cg.expect_current(64 * MIB)?;
    cg.expect_stat(&[("vfio", 64 * MIB)])?;
    expect_no_drift()?;
    for iova in ["0x10000000", "0x11000000", "0x12000000", "0x13000000"] {
        root.run(&format!("map {iova} 16M"))?;
    }
    cg.expect_current(128 * MIB)?;
    root.run("unmap 0x11000000 16M")?;
    root.run("unmap 0x13000000 16M")?;
    cg.expect_current(96 * MIB)?;
    expect_no_drift()?;

    step("closing the container returns the rest");
    root.run("close")?;
    cg.expect_current(0)?;

    step("an unprivileged pinner is counted the same, and its exit returns the charge");
    allow_user(std::path::Path::new(&group), 65534)?;
    let mut tenant = Workload::spawn("tenant-vm", &cg, &["--user", "65534", "vfio"])?;
    tenant.run(&format!("open {group}"))?;
    tenant.run("map 0x100000 64M")?;
    cg.expect_current(64 * MIB)?;
    tenant.exit()?;
    cg.expect_current(0)?;

    step("a map the kernel refuses part way (RLIMIT_MEMLOCK 8 MiB) leaves nothing charged");
    let mut limited = Workload::spawn("limited-vm", &cg, &["--user", "65534", "vfio"])?;
    limited.run(&format!("open {group}"))?;
    limited.run("memlock 8M")?;
    limited.expect_err("map 0x100000 64M", "Cannot allocate memory")?;
    cg.expect_current(0)?;
    limited.run("map 0x100000 4M")?;
    cg.expect_current(4 * MIB)?;
    limited.run("close")?;
    cg.expect_current(0)?;
    expect_no_drift()
}
