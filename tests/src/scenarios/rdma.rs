//! RDMA memory regions on soft-RoCE (rdma_rxe): exact bytes under `rdma`,
//! returned by ibv_dereg_mr and by process exit; root and unprivileged
//! pinners alike; on-demand-paging registrations charge nothing.

use std::path::Path;

use anyhow::{bail, Result};

use crate::rdma_setup::soft_roce;
use crate::scenario::{expect_hook, expect_no_drift, kernel_at_least, skip, step, Agent, Cgroup, Workload};

const MIB: u64 = 1 << 20;

pub fn run() -> Result<()> {
    let cg = Cgroup::create("pincg-rdma")?;
    let _agent = Agent::start()?;

    step("soft-RoCE comes up after the agent: the rdma hooks attach when ib_uverbs loads");
    let device = soft_roce()?;
    expect_hook("rdma:register", 1)?;
    expect_hook("rdma:release", 1)?;

    step(&format!("root registers a 64 MiB MR on {device}, then deregisters it"));
    let mut root = Workload::spawn("root-mr", &cg, &["rdma"])?;
    root.run(&format!("open {device}"))?;
    root.run("reg 64M")?;
    cg.expect_current(64 * MIB)?;
    cg.expect_stat(&[("rdma", 64 * MIB)])?;
    expect_no_drift()?;
    root.run("dereg 0")?;
    cg.expect_current(0)?;

    step("an on-demand-paging MR pins nothing and is charged nothing (rxe takes ODP MRs on 7.x)");
    match root.try_run("reg-odp 16M")? {
        Ok(()) => {
            cg.expect_current(0)?;
            expect_no_drift()?;
        }
        Err(reply) if kernel_at_least(7, 0) => bail!("rxe on 7.x refused an ODP registration: {reply}"),
        Err(reply) => skip("ODP registration", &format!("rxe before 7.x refuses it ({reply})")),
    }

    step("two 16 MiB MRs held at exit are returned by the exit path");
    root.run("reg 16M")?;
    root.run("reg 16M")?;
    cg.expect_current(32 * MIB)?;
    root.exit()?;
    cg.expect_current(0)?;

    step("an unprivileged pinner is counted the same");
    let mut tenant = Workload::spawn("tenant-mr", &cg, &["--user", "65534", "rdma"])?;
    tenant.run(&format!("open {device}"))?;
    tenant.run("reg 64M")?;
    cg.expect_current(64 * MIB)?;
    tenant.run("close")?;
    cg.expect_current(0)?;
    expect_no_drift()?;

    step("the modules unload with pincg attached, and its hooks follow them out and back in");
    drop(tenant);
    shell(&["rdma", "link", "delete", &device])?;
    shell(&["modprobe", "-r", "rdma_rxe", "ib_uverbs"])?;
    // 7.x: the hooks are in ib_core, which that leaves loaded (modprobe
    // considers it before ib_uverbs_support, its last holder, is gone).
    if Path::new("/sys/module/ib_core").exists() {
        shell(&["modprobe", "-r", "ib_core"])?;
    }
    expect_hook("rdma:register", 0)?;
    let device = soft_roce()?;
    expect_hook("rdma:register", 1)?;
    let mut again = Workload::spawn("after-reload", &cg, &["rdma"])?;
    again.run(&format!("open {device}"))?;
    again.run("reg 16M")?;
    cg.expect_current(16 * MIB)?;
    again.run("close")?;
    cg.expect_current(0)
}

fn shell(argv: &[&str]) -> Result<()> {
    let status = std::process::Command::new(argv[0]).args(&argv[1..]).status()?;
    anyhow::ensure!(status.success(), "{} failed: {status}", argv.join(" "));
    println!("   $ {}", argv.join(" "));
    Ok(())
}
