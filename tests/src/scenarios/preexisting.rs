//! Pins made before the agent ever started: not in the ledger, but found
//! at start (VmPin/VmLck of the processes holding them) and reported per
//! cgroup rather than ignored; their release is counted as unknown.

use anyhow::Result;

use crate::scenario::{expect_metric, http_get, step, wait_for, Agent, Cgroup, Workload};

pub fn run() -> Result<()> {
    let cg = Cgroup::create("pincg-before")?;
    step("a process registers 64 MiB while no pincg has ever run");
    let mut early = Workload::spawn("early", &cg, &["io_uring"])?;
    early.run("ring")?;
    early.run("register 64M")?;

    step("the agent starts: the pins are found and reported apart from the ledger");
    let _agent = Agent::start()?;
    expect_metric("pincg_preexisting_pinned_bytes{cgroup=\"/pincg-before\"} 67108864")?;
    cg.expect_current(0)?;

    step("their release is counted as unknown, and the report follows it");
    early.run("unregister")?;
    expect_metric("pincg_ledger_events_total{event=\"unknown_release\"} 1")?;
    wait_for("the pre-existing series to go", || {
        let metrics = http_get("/metrics").unwrap_or_default();
        (!metrics.contains("pincg_preexisting_pinned_bytes{cgroup=\"/pincg-before\"}"), String::new())
    })?;
    cg.expect_current(0)
}
