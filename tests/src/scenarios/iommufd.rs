//! iommufd on the custom kernel (`run-guest.sh --series iommufd --vfio`):
//! IOAS_MAP through the `edu` device's VFIO cdev is charged exactly under
//! `iommufd`; IOAS_COPY of the same range adds nothing; UNMAP and close
//! return the charge; the CAP_IPC_LOCK (no accounting), user and mm
//! accounting modes are all counted the same; IOAS_MAP over budget is
//! refused.

use anyhow::Result;

use crate::devices::vfio_edu_cdev;
use crate::scenario::{expect_hook, expect_no_drift, pincg, step, Agent, Cgroup, Workload};

const MIB: u64 = 1 << 20;

pub fn run() -> Result<()> {
    let cg = Cgroup::create("pincg-iommufd")?;
    let _agent = Agent::start()?;
    let cdev = vfio_edu_cdev()?.to_string_lossy().into_owned();
    expect_hook("iommufd:account", 1)?;
    expect_hook("iommufd:release", 1)?;

    step("root (CAP_IPC_LOCK: the kernel accounts nothing) maps 64 MiB into IOAS 0, attached to edu");
    let mut root = Workload::spawn("root-vmm", &cg, &["iommufd"])?;
    for command in ["open", "ioas", "ioas", &format!("attach {cdev}"), "map 0 0x100000 64M"] {
        root.run(command)?;
    }
    cg.expect_current(64 * MIB)?;
    cg.expect_stat(&[("iommufd", 64 * MIB)])?;
    expect_no_drift()?;

    step("IOAS_COPY of the same range into IOAS 1 adds nothing (same pages)");
    root.run("copy 0 1 0x100000 64M")?;
    cg.expect_current(64 * MIB)?;
    root.run("unmap 1 0x100000 64M")?;
    cg.expect_current(64 * MIB)?;

    step("UNMAP returns the charge; a new map and the fd close too");
    root.run("unmap 0 0x100000 64M")?;
    cg.expect_current(0)?;
    root.run("map 0 0x100000 32M")?;
    cg.expect_current(32 * MIB)?;
    root.run("close")?;
    cg.expect_current(0)?;
    expect_no_drift()?;

    for mode in ["user", "mm"] {
        step(&format!("an unprivileged mapping in rlimit mode {mode} is counted the same"));
        let mut tenant = Workload::spawn(&format!("{mode}-vmm"), &cg, &["iommufd"])?;
        for command in [
            "open".to_string(),
            format!("rlimit-mode {mode}"),
            "ioas".to_string(),
            format!("attach {cdev}"),
            "become 65534".to_string(),
            "map 0 0x100000 16M".to_string(),
        ] {
            tenant.run(&command)?;
        }
        cg.expect_current(16 * MIB)?;
        tenant.exit()?;
        cg.expect_current(0)?;
    }
    expect_no_drift()?;

    step("enforce: IOAS_MAP over a 32 MiB budget is refused before pinning");
    println!("   {}", pincg(&["mode", "enforce"])?.trim());
    println!("   {}", pincg(&["set", "/pincg-iommufd", "max", "32M"])?.trim());
    let mut vmm = Workload::spawn("limited-vmm", &cg, &["iommufd"])?;
    for command in ["open", "ioas", &format!("attach {cdev}")] {
        vmm.run(command)?;
    }
    vmm.expect_err("map 0 0x100000 64M", "Cannot allocate memory")?;
    vmm.run("map 0 0x100000 32M")?;
    cg.expect_current(32 * MIB)?;
    vmm.run("close")?;
    cg.expect_current(0)
}
