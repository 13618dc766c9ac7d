//! AF_XDP umems: exact bytes under `xdp`, returned when the socket closes
//! (the release runs deferred, in a kworker) and when the process exits.
//! And short-term pins (O_DIRECT) never count.

use std::process::Command;

use anyhow::{ensure, Result};

use crate::scenario::{expect_no_drift, step, Agent, Cgroup, Workload};

const MIB: u64 = 1 << 20;

pub fn run() -> Result<()> {
    let cg = Cgroup::create("pincg-xdp")?;
    let _agent = Agent::start()?;

    step("a 64 MiB umem is charged to its cgroup under xdp");
    let mut w = Workload::spawn("xdp", &cg, &["xdp"])?;
    w.run("socket")?;
    w.run("umem 64M")?;
    cg.expect_current(64 * MIB)?;
    cg.expect_stat(&[("xdp", 64 * MIB)])?;
    expect_no_drift()?;

    step("closing the socket returns it (deferred release in a kworker)");
    w.run("close")?;
    cg.expect_current(0)?;

    step("a 16 MiB umem held at exit is returned too");
    w.run("socket")?;
    w.run("umem 16M")?;
    cg.expect_current(16 * MIB)?;
    w.exit()?;
    cg.expect_current(0)?;
    expect_no_drift()?;

    step("O_DIRECT reads of 64 MiB pin pages short-term: nothing is charged");
    let modprobe = Command::new("modprobe").args(["brd", "rd_nr=1", "rd_size=65536"]).status()?;
    ensure!(modprobe.success(), "modprobe brd failed");
    let dd = format!(
        "echo $$ > {}/cgroup.procs && exec dd if=/dev/ram0 of=/dev/null bs=1M count=64 iflag=direct status=none",
        cg.path().display()
    );
    let status = Command::new("sh").args(["-c", &dd]).status()?;
    ensure!(status.success(), "O_DIRECT dd failed");
    cg.expect_current(0)?;
    cg.expect_file("pins.peak", &format!("{}\n", 64 * MIB))?;
    expect_no_drift()
}
