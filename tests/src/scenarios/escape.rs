//! A hostile tenant tries to shed the charge of pins it made (the
//! delegation attacks are in `hostile`): fork, threads, moving to another
//! cgroup and exec, with io_uring buffers; then the double-fetch race on
//! the VFIO refusal point. Every charge stays with the cgroup the pinner
//! was in when it pinned, until the pin is released; a race won against
//! the refusal point is caught by the ledger and the kill action applies.

use anyhow::{ensure, Context, Result};

use crate::devices::vfio_edu_group;
use crate::scenario::{
    expect_hook, expect_no_drift, http_get, ledger_event_count, pincg, step, wait_for, Agent, Cgroup, LedgerReaders,
    Workload,
};

const MIB: u64 = 1 << 20;
/// MAP_DMA attempts in the race, at most.
const RACE_ATTEMPTS: u64 = 2000;

pub fn run() -> Result<()> {
    let a = Cgroup::create("pincg-escape/a")?;
    let b = Cgroup::create("pincg-escape/b")?;
    let _agent = Agent::start_with(&["--mode", "enforce"])?;

    step("fork: a child pins 8 MiB more in the same cgroup; its exit returns only its own");
    let mut w = Workload::spawn("tenant", &a, &["io_uring"])?;
    w.run("ring")?;
    w.run("register 16M")?;
    a.expect_current(16 * MIB)?;
    w.run("fork 8M")?;
    a.expect_current(24 * MIB)?;
    w.run("reap")?;
    a.expect_current(16 * MIB)?;

    step("threads: four threads pin 4 MiB each at once, all in the cgroup");
    w.run("threads 4 4M")?;
    a.expect_current(32 * MIB)?;

    step("threads: 32 threads register 8 MiB each at once, two readers reading the ledger: all charged");
    let missed_before = ledger_event_count("probe_missed")?;
    let readers = LedgerReaders::start(2)?;
    w.run("threads 32 8M")?;
    readers.stop()?;
    let missed = ledger_event_count("probe_missed")? - missed_before;
    println!("   probe_missed +{missed} (the kernel dropped that many probe hits)");
    ensure!(missed == 0, "the kernel's probes missed {missed} hits: pins went uncharged");
    a.expect_current(288 * MIB)?;

    step("moving to another cgroup: the charges made stay in a, new pins go to b, a release from b returns to a");
    b.add(w.pid())?;
    w.run("extra 8M")?;
    b.expect_current(8 * MIB)?;
    a.expect_current(288 * MIB)?;
    w.run("unregister")?;
    a.expect_current(272 * MIB)?;
    b.expect_current(8 * MIB)?;

    step("exec: the rings survive exec (FD_CLOEXEC cleared), so do their charges, until the fds close");
    let pid = w.pid();
    w.run("exec sleep 3600")?;
    wait_for("the tenant runs sleep", || {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        (comm.trim() == "sleep", comm.trim().to_string())
    })?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    a.expect_current(272 * MIB)?;
    b.expect_current(8 * MIB)?;
    // Teardown (the kworker releasing every buffer) while the ledger is
    // read: a release the kernel skipped (a program or probe miss) would
    // leave a charge behind; the counts say which, should it happen.
    let misses =
        || -> Result<(u64, u64)> { Ok((ledger_event_count("program_skipped")?, ledger_event_count("probe_missed")?)) };
    let before = misses()?;
    let readers = LedgerReaders::start(2)?;
    drop(w);
    let released = a.expect_current(0);
    readers.stop()?;
    let after = misses()?;
    println!(
        "   at teardown: program_skipped +{}, probe_missed +{} (kretprobe instances or recursion)",
        after.0 - before.0,
        after.1 - before.1
    );
    released?;
    b.expect_current(0)?;
    expect_no_drift()?;

    race()
}

/// The double fetch: a thread flips a MAP_DMA request's size between
/// 4 MiB (within the 8 MiB pins.max) and 64 MiB while the main thread maps
/// it. The refusal point reads the request before the kernel does; when
/// they read different sizes the kernel maps 64 MiB, and the ledger must
/// catch the overrun and kill the mapper.
fn race() -> Result<()> {
    step("the double-fetch race on VFIO_IOMMU_MAP_DMA: pins.max 8 MiB, action kill, size flipping 4 MiB <-> 64 MiB");
    let group = vfio_edu_group()?.to_string_lossy().into_owned();
    expect_hook("vfio:pin", 1)?;
    let cg = Cgroup::create("pincg-escape/race")?;
    println!("   {}", pincg(&["set", "/pincg-escape/race", "max", "8M"])?.trim());
    println!("   {}", pincg(&["set", "/pincg-escape/race", "action", "kill"])?.trim());
    let mut w = Workload::spawn("racer", &cg, &["vfio"])?;
    w.run(&format!("open {group}"))?;
    let report = "/tmp/pincg-race";
    // Won at the first attempt, the racer writes no report: all zeros.
    std::fs::write(report, "attempts 0 refused 0 small 0 large 0\n").with_context(|| report.to_string())?;
    let killed = w.run_unless_killed(&format!("race {RACE_ATTEMPTS} 4M 64M {report}"))?;
    let text = std::fs::read_to_string(report).unwrap_or_default();
    let field = |name: &str| -> Result<u64> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let at = words.iter().position(|w| *w == name).with_context(|| format!("no {name} in {report}: {text:?}"))?;
        words[at + 1].parse().with_context(|| format!("{report}: {text:?}"))
    };
    let (attempts, refused, small, large) = (field("attempts")?, field("refused")?, field("small")?, field("large")?);
    let metric = |name: &str| -> u64 {
        let line = format!("{name}{{source=\"vfio\"}} ");
        let text = http_get("/metrics").unwrap_or_default();
        text.lines().find_map(|l| l.strip_prefix(&line)?.parse().ok()).unwrap_or(0)
    };
    println!(
        "   {attempts} attempts answered: {refused} refused, {small} mapped 4 MiB, {large} mapped 64 MiB; killed: {killed}"
    );
    // The kill path must run: the page-fault trick in the racer makes the
    // race winnable under TCG (about 1 attempt in 12 on 6.12).
    ensure!(killed, "the race was never won in {attempts} attempts: the kill path did not run");
    ensure!(large == 0, "{large} maps of 64 MiB were answered: the racer should have been killed at the first");
    // The attempt after the last report won the race: the kernel mapped
    // 64 MiB where the refusal point read 4 MiB, chunk by chunk.
    wait_for("one overrun and one kill counted for vfio", || {
        let (overruns, kills) = (metric("pincg_overruns_total"), metric("pincg_kills_total"));
        (overruns == 1 && kills == 1, format!("overruns {overruns}, kills {kills}"))
    })?;
    println!("   race won at attempt {}: one overrun, one kill", attempts + 1);
    // Exactly one pins.max event per request: every refusal, and the
    // overrun once however many chunks it pinned over the limit.
    cg.expect_file("pins.events.local", &format!("high 0\nmax {}\n", refused + 1))?;
    cg.expect_current(0)?;
    expect_no_drift()
}
