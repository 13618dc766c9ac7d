//! iommufd on the custom kernel (`run-guest.sh --series iommufd --vfio`):
//! IOAS_MAP through the `edu` device's VFIO cdev is charged exactly under
//! `iommufd`; IOAS_COPY of the same range adds nothing; UNMAP and close
//! return the charge; the CAP_IPC_LOCK (no accounting), user and mm
//! accounting modes are all counted the same; IOAS_MAP over budget is
//! refused, a 1 TiB claim within 2x the kernel's own rejection + 1 ms.

use anyhow::{ensure, Result};

use super::admission::claim;
use crate::devices::vfio_edu_cdev;
use crate::scenario::{expect_hook, expect_no_drift, pincg, step, Agent, Cgroup, Workload};

const MIB: u64 = 1 << 20;

pub fn run() -> Result<()> {
    let cg = Cgroup::create("pincg-iommufd")?;
    let cdev = vfio_edu_cdev()?.to_string_lossy().into_owned();
    // With a device attached IOAS_MAP pins at once (and fails on the
    // unbacked range); without one it only records the area.
    step("a 1 TiB IOAS_MAP claim without pincg, edu attached: the kernel's own rejection, timed");
    let mut claimer = Workload::spawn("claim-bare", &cg, &["iommufd"])?;
    for command in ["open", "ioas", &format!("attach {cdev}")] {
        claimer.run(command)?;
    }
    let (bare_ns, bare_error) = claim(&mut claimer, "/tmp/claim-iommufd-bare")?;
    println!("   {bare_ns} ns, {bare_error}");
    claimer.run("close")?;
    let _agent = Agent::start()?;
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
    let (ns, error) = claim(&mut vmm, "/tmp/claim-iommufd-pincg")?;
    println!("   a 1 TiB claim: {ns} ns (without pincg {bare_ns} ns), {error}");
    ensure!(error.contains("Cannot allocate memory"), "a 1 TiB IOAS_MAP claim failed with {error:?}, not ENOMEM");
    ensure!(ns <= 2 * bare_ns + 1_000_000, "a 1 TiB IOAS_MAP claim took {ns} ns, over 2 x {bare_ns} + 1 ms");
    vmm.run("map 0 0x100000 32M")?;
    cg.expect_current(32 * MIB)?;
    vmm.run("close")?;
    cg.expect_current(0)
}
