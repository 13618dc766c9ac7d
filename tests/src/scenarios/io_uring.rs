//! io_uring registered buffers end to end (foundation issue): exact bytes
//! per cgroup in all three views, release on every path, owner not current,
//! and a ledger that survives SIGKILL of the agent.

use anyhow::{ensure, Result};

use crate::scenario::{
    cgroup_series, expect_no_drift, http_get, kernel_at_least, pincg, skip, step, Agent, Cgroup, Workload,
};

const MIB: u64 = 1 << 20;

pub fn run() -> Result<()> {
    let parent = Cgroup::create("pincg-test")?;
    let a = Cgroup::create("pincg-test/a")?;
    let b = Cgroup::create("pincg-test/b")?;
    let moved_to = Cgroup::create("pincg-test/c")?;
    let agent = Agent::start()?;

    step("root registers 64 MiB in a; nobody registers 16 MiB + an empty slot + 16 MiB (BUFFERS2, tags, sparse) in b");
    let mut root = Workload::spawn("root-pinner", &a, &["io_uring"])?;
    root.run("ring")?;
    root.run("register 64M")?;
    let mut tenant = Workload::spawn("nobody-pinner", &b, &["--user", "65534", "io_uring"])?;
    tenant.run("ring")?;
    tenant.run("register2 16M,sparse,16M")?;
    a.expect_current(64 * MIB)?;
    a.expect_stat(&[("io_uring", 64 * MIB)])?;
    b.expect_current(32 * MIB)?;
    b.expect_stat(&[("io_uring", 32 * MIB)])?;
    parent.expect_current(96 * MIB)?;
    expect_no_drift()?;

    step("the metrics endpoint and pincg status show the same numbers");
    let metrics = http_get("/metrics")?;
    let pinned = |cgroup: &str, bytes: u64| {
        format!("{} {bytes}", cgroup_series("pincg_pinned_bytes", cgroup, ("source", "io_uring")))
    };
    for line in [
        pinned("/pincg-test/a", 67108864),
        pinned("/pincg-test/b", 33554432),
        pinned("/pincg-test", 100663296),
        "pincg_hook_attached{hook=\"io_uring:register\",source=\"io_uring\"} 1".to_string(),
        "pincg_hook_attached{hook=\"io_uring:release\",source=\"io_uring\"} 1".to_string(),
    ] {
        ensure!(metrics.lines().any(|l| l == line), "metrics lack {line:?}:\n{metrics}");
    }
    println!("   ok metrics carry 67108864 / 33554432 / 100663296");
    let status = pincg(&["status"])?;
    print!("{status}");
    expect_status_row(&status, "pincg-test", "96.0 MiB")?;
    expect_status_row(&status, "a", "64.0 MiB")?;
    expect_status_row(&status, "b", "32.0 MiB")?;

    step("pincg explain and pincg top name the objects and the busiest cgroups");
    let explained = pincg(&["explain", &root.pid().to_string()])?;
    print!("{explained}");
    ensure!(explained.ends_with("1 objects, 64.0 MiB pinned\n"), "explain by pid");
    ensure!(explained.lines().any(|l| l.starts_with("io_uring ") && l.ends_with("/pincg-test/a")));
    let by_cgroup = pincg(&["explain", "/pincg-test"])?;
    ensure!(by_cgroup.ends_with("3 objects, 96.0 MiB pinned\n"), "explain by cgroup:\n{by_cgroup}");
    let json: serde_json::Value = serde_json::from_str(&pincg(&["explain", "--json", "/pincg-test/b"])?)?;
    ensure!(json.as_array().map(Vec::len) == Some(2), "explain --json: {json}");
    let top = pincg(&["top", "--iterations", "1"])?;
    print!("{top}");
    let order: Vec<&str> =
        top.lines().filter_map(|l| l.split_whitespace().last()).filter(|c| c.starts_with("/pincg-test")).collect();
    ensure!(order == ["/pincg-test", "/pincg-test/a", "/pincg-test/b"], "top order {order:?}");

    step("the charge stays with a when the pinner moves to c");
    moved_to.add(root.pid())?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    a.expect_current(64 * MIB)?;
    moved_to.expect_current(0)?;

    step("SIGKILL the agent; b releases one 16 MiB buffer (BUFFERS_UPDATE to empty) while it is down");
    agent.kill()?;
    tenant.run("update-empty 2")?;
    let agent = Agent::start()?;
    a.expect_current(64 * MIB)?;
    b.expect_current(16 * MIB)?;
    expect_no_drift()?;

    step("BUFFERS_UPDATE empties the other slot; UNREGISTER from c returns a's charge to a");
    tenant.run("update-empty 0")?;
    b.expect_current(0)?;
    root.run("unregister")?;
    a.expect_current(0)?;
    moved_to.expect_current(0)?;

    step("CLONE_BUFFERS adds nothing; exit without unregistering releases everything (ring teardown)");
    let mut cloner = Workload::spawn("cloner", &a, &["io_uring"])?;
    cloner.run("ring")?;
    cloner.run("register 64M")?;
    if kernel_at_least(6, 12) {
        cloner.run("clone")?;
    } else {
        skip("CLONE_BUFFERS", "the opcode arrived in 6.12");
    }
    a.expect_current(64 * MIB)?;
    tenant.run("unregister")?;
    tenant.run("register 32M")?;
    b.expect_current(32 * MIB)?;
    cloner.exit()?;
    tenant.exit()?;
    a.expect_current(0)?;
    b.expect_current(0)?;
    parent.expect_current(0)?;
    expect_no_drift()?;

    step("the ledger is empty and saw no anomalies");
    let metrics = http_get("/metrics")?;
    for line in [
        "pincg_ledger_objects 0",
        "pincg_ledger_events_total{event=\"charge\"} 5",
        "pincg_ledger_events_total{event=\"release\"} 5",
        "pincg_ledger_events_total{event=\"ledger_full\"} 0",
        "pincg_ledger_events_total{event=\"stale_object\"} 0",
        "pincg_ledger_events_total{event=\"unknown_release\"} 0",
    ] {
        ensure!(metrics.lines().any(|l| l == line), "metrics lack {line:?}:\n{metrics}");
    }
    println!("   ok 5 charges, 5 releases, nothing lost");
    drop(agent);
    Ok(())
}

/// `pincg status` has a row for `name` whose CURRENT column is `current`.
fn expect_status_row(status: &str, name: &str, current: &str) -> Result<()> {
    let ok = status.lines().any(|l| {
        let mut cols = l.split_whitespace();
        cols.next() == Some(name) && l.contains(current)
    });
    ensure!(ok, "pincg status has no row {name} with {current}:\n{status}");
    println!("   ok pincg status row {name} = {current}");
    Ok(())
}
