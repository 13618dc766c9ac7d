//! A hostile tenant tries to shed the charge of pins it made (the
//! delegation attacks are in `hostile`): fork, threads, moving to another
//! cgroup and exec, with io_uring buffers; then the double-fetch race on
//! the VFIO refusal point. Every charge stays with the cgroup the pinner
//! was in when it pinned, until the pin is released; a race won against
//! the refusal point is caught by the ledger and the kill action applies.

use anyhow::{bail, ensure, Context, Result};

use crate::devices::vfio_edu_group;
use crate::scenario::{expect_hook, expect_no_drift, http_get, pincg, step, wait_for, Agent, Cgroup, Workload};

const MIB: u64 = 1 << 20;
/// MAP_DMA attempts in the race, at most.
const RACE_ATTEMPTS: u64 = 200;

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

    step("moving to another cgroup: the charges made stay in a, new pins go to b, a release from b returns to a");
    b.add(w.pid())?;
    w.run("extra 8M")?;
    b.expect_current(8 * MIB)?;
    a.expect_current(32 * MIB)?;
    w.run("unregister")?;
    a.expect_current(16 * MIB)?;
    b.expect_current(8 * MIB)?;

    step("exec: the rings survive exec (FD_CLOEXEC cleared), so do their charges, until the fds close");
    let pid = w.pid();
    w.run("exec sleep 3600")?;
    wait_for("the tenant runs sleep", || {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        (comm.trim() == "sleep", comm.trim().to_string())
    })?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    a.expect_current(16 * MIB)?;
    b.expect_current(8 * MIB)?;
    drop(w);
    a.expect_current(0)?;
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
    if killed {
        // The attempt after the last report won the race: the kernel mapped
        // 64 MiB where the refusal point read 4 MiB.
        wait_for("the overrun and the kill counted for vfio", || {
            let (overruns, kills) = (metric("pincg_overruns_total"), metric("pincg_kills_total"));
            (overruns >= 1 && kills >= 1, format!("overruns {overruns}, kills {kills}"))
        })?;
        println!(
            "   race won at attempt {}: overruns {}, kills {} (one per 64 MiB chunk pinned over the limit)",
            attempts + 1,
            metric("pincg_overruns_total"),
            metric("pincg_kills_total")
        );
    } else {
        ensure!(attempts == RACE_ATTEMPTS, "the racer stopped after {attempts} attempts without being killed");
        ensure!(large == 0, "{large} maps of 64 MiB went over the 8 MiB pins.max and nobody was killed");
        ensure!(metric("pincg_overruns_total") == 0, "an overrun was counted but nothing was killed");
        // Every refusal is one pins.max event at the cgroup, nothing else is.
        cg.expect_file("pins.events.local", &format!("high 0\nmax {refused}\n"))?;
        println!("   race never won in {RACE_ATTEMPTS} attempts: every map was checked as the kernel read it");
    }
    if large > 0 {
        bail!("{large} maps of 64 MiB were answered: the racer should have been killed at the first");
    }
    cg.expect_current(0)?;
    expect_no_drift()
}
