//! Exhaustion: a ledger too small for the pins made, and a flood of limit
//! events. The agent runs with `--ledger-objects 64`; 80 io_uring buffers
//! of one page each are registered at once. The documented fail mode is
//! fail-open: the 64 that fit are charged, the other 16 are not, and each
//! is counted as `ledger_full` (metric and alert). Releasing everything
//! returns usage to 0 and new pins are charged again. Then 2000 pins.high
//! and pins.max crossings in a row are each counted, and the agent lives.

use anyhow::{ensure, Result};

use crate::scenario::{
    expect_metric, expect_no_drift, http_get, kernel_pinned_pages, map_entries, pincg, step, wait_for, Agent, Cgroup,
    Workload, MIRROR_ROOT,
};

const PAGE: u64 = 4096;
const CAPACITY: u64 = 64;
const REGISTERED: u64 = 80;
const FLOOD: u64 = 2000;

fn ledger_event(event: &str, n: u64) -> Result<()> {
    expect_metric(&format!("pincg_ledger_events_total{{event=\"{event}\"}} {n}"))
}

pub fn run() -> Result<()> {
    let full = Cgroup::create("pincg-exhaustion/full")?;
    let agent = Agent::start_with(&["--ledger-objects", &CAPACITY.to_string()])?;
    expect_metric(&format!("pincg_ledger_capacity{{map=\"objects\"}} {CAPACITY}"))?;

    step("80 one-page buffers where the ledger holds 64: 64 charged, 16 not and counted as ledger_full");
    let mut w = Workload::spawn("filler", &full, &["io_uring"])?;
    w.run("ring")?;
    w.run(&format!("register-n {REGISTERED} 4K"))?;
    full.expect_current(CAPACITY * PAGE)?;
    ledger_event("ledger_full", REGISTERED - CAPACITY)?;
    ledger_event("charge", CAPACITY)?;
    expect_metric(&format!("pincg_ledger_objects {CAPACITY}"))?;
    let objects = map_entries()?.get("objects").copied().unwrap_or(0) as u64;
    ensure!(objects == CAPACITY, "the objects map holds {objects} entries, not {CAPACITY}");
    step("fail-open, exactly: the kernel holds 16 pages more than the ledger");
    let root = std::path::Path::new(MIRROR_ROOT).join("pins.current");
    wait_for("kernel pinned - pins.current of / = 16 pages", || {
        let agent: i64 = std::fs::read_to_string(&root).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(-1);
        let kernel = kernel_pinned_pages().unwrap_or(-1) * PAGE as i64;
        (kernel - agent == ((REGISTERED - CAPACITY) * PAGE) as i64, format!("kernel {kernel} B, agent {agent} B"))
    })?;

    step("releasing everything: 64 releases, 16 releases the ledger never saw, usage 0");
    w.run("unregister")?;
    full.expect_current(0)?;
    ledger_event("release", CAPACITY)?;
    ledger_event("unknown_release", REGISTERED - CAPACITY)?;
    expect_metric("pincg_ledger_objects 0")?;
    expect_no_drift()?;

    step("with room again, new pins are charged");
    w.run("register-n 4 4K")?;
    full.expect_current(4 * PAGE)?;
    ledger_event("ledger_full", REGISTERED - CAPACITY)?;
    w.run("unregister")?;
    full.expect_current(0)?;

    step("an event flood: 2000 registrations over pins.high and pins.max (action alert), each one counted");
    let flood = Cgroup::create("pincg-exhaustion/flood")?;
    println!("   {}", pincg(&["set", "/pincg-exhaustion/flood", "high", "4K"])?.trim());
    println!("   {}", pincg(&["set", "/pincg-exhaustion/flood", "max", "4K"])?.trim());
    let mut f = Workload::spawn("flood", &flood, &["io_uring"])?;
    f.run("ring")?;
    f.run(&format!("churn {FLOOD} 8K"))?;
    flood.expect_file("pins.events.local", &format!("high {FLOOD}\nmax {FLOOD}\n"))?;
    flood.expect_current(0)?;
    expect_metric(&format!("pincg_overruns_total{{source=\"io_uring\"}} {FLOOD}"))?;
    ledger_event("charge", CAPACITY + 4 + FLOOD)?;
    ledger_event("release", CAPACITY + 4 + FLOOD)?;
    // Every hook ran for every pin of the flood: the kernel skipped none.
    ledger_event("program_skipped", 0)?;
    ensure!(http_get("/healthz").is_ok(), "the agent stopped answering after the flood");
    ensure!(agent.running(), "the agent died in the flood:\n{}", agent.log_text());
    expect_no_drift()
}
