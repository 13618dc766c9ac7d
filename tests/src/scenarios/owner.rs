//! Owner, not current: a VFIO group fd (over a unix socket) and an io_uring
//! fd (with pidfd_getfd: the kernel refuses io_uring fds in SCM_RIGHTS) are
//! handed to a process in another cgroup, which closes them after the
//! pinner is gone. The pinner's cgroup is uncharged; the holder's is never
//! charged.

use anyhow::Result;

use crate::devices::vfio_edu_group;
use crate::scenario::{expect_hook, expect_no_drift, step, Agent, Cgroup, Workload};

const MIB: u64 = 1 << 20;

pub fn run() -> Result<()> {
    let pinner_cg = Cgroup::create("pincg-owner/pinner")?;
    let holder_cg = Cgroup::create("pincg-owner/holder")?;
    let _agent = Agent::start()?;
    let group = vfio_edu_group()?.to_string_lossy().into_owned();
    expect_hook("vfio:pin", 1)?;

    for (kind, setup) in [
        ("io_uring", vec!["ring".to_string(), "register 64M".to_string()]),
        ("vfio", vec![format!("open {group}"), "map 0x100000 64M".to_string()]),
    ] {
        step(&format!("{kind}: pin 64 MiB in pinner, hand the fd to holder, exit"));
        let mut pinner = Workload::spawn(&format!("{kind}-pinner"), &pinner_cg, &[kind])?;
        for command in &setup {
            pinner.run(command)?;
        }
        let mut holder = Workload::spawn(&format!("{kind}-holder"), &holder_cg, &[kind])?;
        if kind == "io_uring" {
            holder.run(&format!("grab {} anon_inode:[io_uring]", pinner.pid()))?;
        } else {
            let socket = format!("/tmp/pincg-{kind}.sock");
            holder.run(&format!("listen {socket}"))?;
            pinner.run(&format!("send {socket}"))?;
            holder.run("accept")?;
        }
        pinner.run("close")?;
        pinner.exit()?;
        pinner_cg.expect_current(64 * MIB)?;
        holder_cg.expect_current(0)?;

        step(&format!("{kind}: holder closes the fd; the pinner's cgroup gets the bytes back"));
        holder.run("drop-received")?;
        pinner_cg.expect_current(0)?;
        holder_cg.expect_current(0)?;
        holder.exit()?;
    }
    expect_no_drift()
}
