//! Exhaustion: a ledger too small for the pins made, and a flood of limit
//! events. The agent runs with `--ledger-objects 64`; 80 io_uring buffers
//! of one page each are registered at once. The documented fail mode is
//! fail-open: the 64 that fit are charged, the other 16 are not, and each
//! is counted as `ledger_full` (metric and alert). Releasing everything
//! returns usage to 0 and new pins are charged again. Then 2000 pins.high
//! and pins.max crossings in a row are each counted, and the agent lives.
//! Last, no tenant blinds the node: a cgroup with a limit, within its own
//! pins.max, fills the ledger only up to 56 of its 64 objects (then ENOMEM),
//! so a cgroup without a limit is still charged, and another limited one is
//! refused rather than left uncharged.

use anyhow::{ensure, Result};

use crate::devices::vfio_edu_group;
use crate::scenario::{
    expect_hook, expect_metric, expect_no_drift, http_get, kernel_pinned_pages, map_entries, pincg, step, wait_for,
    Agent, Cgroup, Workload, MIRROR_ROOT,
};

const PAGE: u64 = 4096;
const CAPACITY: u64 = 64;
const REGISTERED: u64 = 80;
const FLOOD: u64 = 2000;
/// What limited cgroups may fill of the ledger: all but its last eighth.
const LIMITED_ROOM: u64 = CAPACITY - CAPACITY / 8;

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
    expect_no_drift()?;
    drop(f);
    drop(w);
    blinding()
}

/// A tenant with a limit maps one-page buffers (VFIO MAP_DMA, one pin
/// object each) until the ledger refuses it.
fn blinding() -> Result<()> {
    step("a limited tenant within its 1 MiB pins.max maps 4 KiB buffers: 56 of 64 objects, then ENOMEM");
    let group = vfio_edu_group()?.to_string_lossy().into_owned();
    // The VFIO module was just loaded: its charge hooks attach within a second.
    expect_hook("vfio:pin", 1)?;
    println!("   {}", pincg(&["mode", "enforce"])?.trim());
    let tenant = Cgroup::create("pincg-exhaustion/tenant")?;
    println!("   {}", pincg(&["set", "/pincg-exhaustion/tenant", "max", "1M"])?.trim());
    let mut t = Workload::spawn("tenant", &tenant, &["vfio"])?;
    t.run(&format!("open {group}"))?;
    for i in 0..LIMITED_ROOM {
        t.run(&format!("map {:#x} 4K", (i + 1) << 32))?;
    }
    t.expect_err(&format!("map {:#x} 4K", (LIMITED_ROOM + 1) << 32), "Cannot allocate memory")?;
    tenant.expect_current(LIMITED_ROOM * PAGE)?;
    ledger_event("ledger_room", 1)?;

    step("a cgroup without a limit is still charged in the eighth kept for it");
    let free = Cgroup::create("pincg-exhaustion/free")?;
    let mut u = Workload::spawn("free", &free, &["io_uring"])?;
    u.run("ring")?;
    u.run(&format!("register-n {} 4K", CAPACITY - LIMITED_ROOM))?;
    free.expect_current((CAPACITY - LIMITED_ROOM) * PAGE)?;
    ledger_event("ledger_full", REGISTERED - CAPACITY)?;

    step("another limited cgroup is refused (ENOMEM, AF_XDP), not left uncharged");
    let other = Cgroup::create("pincg-exhaustion/other")?;
    println!("   {}", pincg(&["set", "/pincg-exhaustion/other", "max", "1M"])?.trim());
    let mut x = Workload::spawn("other", &other, &["xdp"])?;
    x.run("socket")?;
    x.expect_err("umem 4K", "Cannot allocate memory")?;
    other.expect_current(0)?;
    ledger_event("ledger_room", 2)?;
    ledger_event("ledger_full", REGISTERED - CAPACITY)?;
    drop((t, u, x));
    tenant.expect_current(0)?;
    free.expect_current(0)?;
    expect_no_drift()
}
