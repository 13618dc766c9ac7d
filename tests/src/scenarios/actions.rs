//! Where no refusal point exists (io_uring on 6.1/6.12), the cgroup's
//! pins.max.action applies as soon as the ledger shows the overrun: alert
//! counts, kill SIGKILLs the pinner from BPF, freeze freezes the cgroup.
//! Where the kernel has one (io_uring_register on 7.x), the same requests
//! are refused before pinning, at exactly the byte. pins.high counts
//! crossings, not pins.

use anyhow::{ensure, Result};

use crate::scenario::{expect_hook, expect_metric, io_uring_refused, pincg, skip, step, Agent, Cgroup, Workload};

const MIB: u64 = 1 << 20;

pub fn run() -> Result<()> {
    let _agent = Agent::start_with(&["--mode", "enforce"])?;
    let probe = pincg(&["probe"])?;
    let (refused, line) = io_uring_refused();
    ensure!(probe.lines().any(|l| l == line), "probe lacks {line:?}:\n{probe}");
    if refused {
        refused_before_pinning()?;
    } else {
        acted_after()?;
    }
    high_crossings()
}

/// 7.x: io_uring_register is refused with ENOMEM before anything is pinned.
fn refused_before_pinning() -> Result<()> {
    expect_hook("io_uring:refuse", 1)?;
    let why = "io_uring_register is refused before pinning on this kernel (7.x); act-after runs on 6.1/6.12";
    skip("alert, kill and freeze on an io_uring overrun", why);
    step("io_uring: with a 32 MiB budget, 16 + 16 MiB register, the next 4 KiB is refused, as is 64 MiB at once");
    let cg = limited("pincg-actions/refused", "kill")?;
    let mut w = Workload::spawn("refused", &cg, &["io_uring"])?;
    w.run("ring")?;
    w.expect_err("register 64M", "Cannot allocate memory")?;
    cg.expect_current(0)?;
    w.run("register2 16M,16M")?;
    cg.expect_current(32 * MIB)?;
    w.expect_err("update-fresh 0 4K", "Cannot allocate memory")?;
    cg.expect_file("pins.events.local", "high 0\nmax 2\n")?;
    expect_metric("pincg_refusals_total{outcome=\"refused\",source=\"io_uring\"} 2")?;
    expect_metric("pincg_overruns_total{source=\"io_uring\"} 0")?;
    w.run("unregister")?;
    cg.expect_current(0)
}

/// 6.1/6.12: the cgroup's action applies once the ledger shows the overrun.
fn acted_after() -> Result<()> {
    step("alert: a 64 MiB registration over a 32 MiB budget is counted, nothing else");
    alerted("alert", "register 64M", 1)?;
    step("alert: one registration of four 16 MiB buffers over a 32 MiB budget is one request: one event, one overrun");
    alerted("batch", "register-n 4 16M", 2)?;

    step("kill: the pinning task is killed by SIGKILL, synchronously; teardown returns the charge");
    let kill = limited("pincg-actions/kill", "kill")?;
    let mut w = Workload::spawn("killed", &kill, &["io_uring"])?;
    w.run("ring")?;
    w.expect_killed("register 64M")?;
    kill.expect_current(0)?;
    kill.expect_file("pins.events.local", "high 0\nmax 1\n")?;
    expect_metric("pincg_kills_total{source=\"io_uring\"} 1")?;

    step("freeze: the agent freezes the cgroup");
    let freeze = limited("pincg-actions/freeze", "freeze")?;
    let mut w = Workload::spawn("frozen", &freeze, &["io_uring"])?;
    w.run("ring")?;
    w.run("register 64M")?;
    crate::scenario::wait_for("cgroup.events says frozen 1", || {
        let events = std::fs::read_to_string(freeze.path().join("cgroup.events")).unwrap_or_default();
        (events.lines().any(|l| l == "frozen 1"), events)
    })?;
    freeze.expect_file("pins.events.local", "high 0\nmax 1\n")?;
    std::fs::write(freeze.path().join("cgroup.freeze"), "0")?;
    w.run("unregister")?;
    freeze.expect_current(0)?;

    Ok(())
}

/// pins.high: one event per crossing, not per pin.
fn high_crossings() -> Result<()> {
    step("pins.high: one event per crossing, not per pin");
    let high = Cgroup::create("pincg-actions/high")?;
    println!("   {}", pincg(&["set", "/pincg-actions/high", "high", "32M"])?.trim());
    let mut w = Workload::spawn("high", &high, &["io_uring"])?;
    w.run("ring")?;
    w.run("register2 16M,16M")?;
    high.expect_file("pins.events.local", "high 0\nmax 0\n")?;
    w.run("unregister")?;
    w.run("register2 16M,16M,16M,16M")?;
    high.expect_file("pins.events.local", "high 1\nmax 0\n")?;
    w.run("update-empty 3")?;
    w.run("update-empty 2")?;
    high.expect_current(32 * MIB)?;
    w.run("update-empty 1")?;
    w.run("unregister")?;
    w.run("register 48M")?;
    high.expect_file("pins.events.local", "high 2\nmax 0\n")?;
    let events = std::fs::read_to_string(high.mirror("pins.events"))?;
    ensure!(events == "high 2\nmax 0\n", "pins.events {events:?}");
    Ok(())
}

/// A cgroup with a 32 MiB pins.max and the given action.
/// In a new cgroup `pincg-actions/<name>` with a 32 MiB budget and action
/// alert, `register` pins 64 MiB: counted as one `max` event, the node's
/// `overruns`-th io_uring overrun, nothing else; then released.
fn alerted(name: &str, register: &str, overruns: u64) -> Result<()> {
    let cg = limited(&format!("pincg-actions/{name}"), "alert")?;
    let mut w = Workload::spawn(name, &cg, &["io_uring"])?;
    w.run("ring")?;
    w.run(register)?;
    cg.expect_current(64 * MIB)?;
    cg.expect_file("pins.events.local", "high 0\nmax 1\n")?;
    expect_metric(&format!("pincg_overruns_total{{source=\"io_uring\"}} {overruns}"))?;
    w.run("unregister")?;
    cg.expect_current(0)
}

fn limited(rel: &str, action: &str) -> Result<Cgroup> {
    let cg = Cgroup::create(rel)?;
    println!("   {}", pincg(&["set", rel, "max", "32M"])?.trim());
    println!("   {}", pincg(&["set", rel, "action", action])?.trim());
    Ok(cg)
}
