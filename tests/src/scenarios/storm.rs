//! Crash and restart: SIGKILL the agent in the middle of a storm of pins
//! and unpins from several cgroups, restart it, and find nothing lost or
//! counted twice; refusals keep working while no agent runs.

use std::thread;

use anyhow::{anyhow, Result};

use crate::devices::vfio_edu_group;
use crate::scenario::{expect_metric, expect_no_drift, pincg, step, Agent, Cgroup, Workload};

const MIB: u64 = 1 << 20;
/// Register/unregister pairs per churning workload.
const CHURN: u64 = 1500;

pub fn run() -> Result<()> {
    let cgroups: Vec<Cgroup> = (0..3).map(|i| Cgroup::create(&format!("pincg-storm/t{i}"))).collect::<Result<_>>()?;
    let agent = Agent::start_with(&["--mode", "enforce"])?;
    let group = vfio_edu_group()?.to_string_lossy().into_owned();

    step("each tenant holds a steady buffer and churns another; the agent is SIGKILLed mid-storm");
    let mut steady = Vec::new();
    let mut churning = Vec::new();
    for (i, cg) in cgroups.iter().enumerate() {
        let mut holder = Workload::spawn(&format!("holder{i}"), cg, &["io_uring"])?;
        holder.run("ring")?;
        holder.run(&format!("register {}M", 4 * (i + 1)))?;
        steady.push(holder);
        let mut churner = Workload::spawn(&format!("churner{i}"), cg, &["io_uring"])?;
        churner.run("ring")?;
        churning.push(churner);
    }
    let churners: Vec<_> = churning
        .into_iter()
        .enumerate()
        .map(|(i, mut w)| {
            thread::spawn(move || -> Result<Workload> {
                w.run(&format!("churn {CHURN} {}K", 64 * (i + 1)))?;
                Ok(w)
            })
        })
        .collect();
    thread::sleep(std::time::Duration::from_millis(1500));
    agent.kill()?;
    println!("   agent killed while {} register/unregister pairs were under way", 3 * CHURN);

    step("while no agent runs, refusals still work (VFIO over a 16 MiB budget)");
    let limited = Cgroup::create("pincg-storm/limited")?;
    let agent = Agent::start_with(&["--mode", "enforce"])?;
    println!("   {}", pincg(&["set", "/pincg-storm/limited", "max", "16M"])?.trim());
    agent.kill()?;
    let mut vm = Workload::spawn("vm", &limited, &["vfio"])?;
    vm.run(&format!("open {group}"))?;
    vm.expect_err("map 0x100000 32M", "Cannot allocate memory")?;
    vm.run("map 0x100000 8M")?;

    let mut tenants = steady;
    for churner in churners {
        tenants.push(churner.join().map_err(|_| anyhow!("a churning workload panicked"))??);
    }

    step("restart: every cgroup shows exactly what it holds; the kernel agrees");
    let _agent = Agent::start()?;
    for (i, cg) in cgroups.iter().enumerate() {
        cg.expect_current(4 * (i as u64 + 1) * MIB)?;
    }
    limited.expect_current(8 * MIB)?;
    expect_no_drift()?;
    for t in tenants {
        t.exit()?;
    }
    vm.run("close")?;
    for cg in &cgroups {
        cg.expect_current(0)?;
    }
    expect_no_drift()?;
    // 4500 churned pairs, 3 steady buffers, 1 VFIO map: every charge
    // released, none missed, none unknown.
    expect_metric("pincg_ledger_objects 0")?;
    expect_metric("pincg_ledger_events_total{event=\"stale_object\"} 0")?;
    expect_metric("pincg_ledger_events_total{event=\"unknown_release\"} 0")?;
    expect_metric(&format!("pincg_ledger_events_total{{event=\"charge\"}} {}", 3 * CHURN + 3 + 1))?;
    expect_metric(&format!("pincg_ledger_events_total{{event=\"release\"}} {}", 3 * CHURN + 3 + 1))
}
