//! Agent scale benchmark (not a pass/fail test): real io_uring pin objects
//! spread over many cgroups, grown in three steps up to 10,000 cgroups and
//! 100,000 live objects, and at each size the agent's costs: time to read
//! the ledger and the tree, resident memory, a /metrics scrape, `pincg
//! status`, a full ledger read (`pincg explain`), and the latency of
//! control (`pincg set` in force, a pins.high crossing in pins.events).
//!
//! Run it with tests/bench.sh (a guest with 4 GiB: 100,000 pinned pages).

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::scenario::{http_get, median, sibling_binary, step, wait_for, wait_for_within, Agent, Cgroup, Workload};

const DIR: &str = "pincg-scale";
const PER_CGROUP: usize = 10;
const SIZES: [usize; 3] = [1000, 3000, 10000];
const PAGE: u64 = 4096;

/// Targets of the performance issue.
const SCRAPE_TARGET: Duration = Duration::from_millis(50);
const STATUS_TARGET: Duration = Duration::from_millis(200);
const CONTROL_TARGET: Duration = Duration::from_millis(100);
const RSS_TARGET: u64 = 64 << 20;
const READ_RATE_TARGET: f64 = 200_000.0;

pub fn run() -> Result<()> {
    Cgroup::create(DIR)?;
    let _agent = Agent::start()?;
    let mut spreader = Workload::spawn("spreader", &Cgroup::create(&format!("{DIR}/spreader"))?, &["io_uring"])?;
    let mut rows = Vec::new();
    let mut made = 0;
    // Each measurement adds one page to c1 (the pins.high crossing).
    for (crossings, size) in SIZES.into_iter().enumerate() {
        step(&format!("{size} cgroups, {} pin objects", size * PER_CGROUP));
        for i in made..size {
            fs::create_dir(Cgroup { rel: format!("{DIR}/c{i}") }.path())?;
        }
        spreader.run(&format!("spread /sys/fs/cgroup/{DIR} {made} {size} {PER_CGROUP}"))?;
        made = size;
        let total = (size * PER_CGROUP + crossings) as u64 * PAGE;
        let current = Cgroup { rel: DIR.into() }.mirror("pins.current");
        let started = Instant::now();
        // The first round at a new size creates the new mirror directories.
        wait_for_within(&format!("{} = {total}", current.display()), Duration::from_secs(300), || {
            let text = fs::read_to_string(&current).unwrap_or_default();
            (text.trim() == total.to_string(), text.trim().to_string())
        })?;
        println!("   mirror complete {} ms after the pins", started.elapsed().as_millis());
        rows.push(measure(size, crossings, &mut spreader)?);
        print_table(&rows);
    }
    Ok(())
}

struct Row {
    cgroups: usize,
    objects: usize,
    sample: Duration,
    rss: u64,
    scrape: Duration,
    scrape_bytes: usize,
    status: Duration,
    read_rate: f64,
    set: Duration,
    high: Duration,
}

fn measure(cgroups: usize, crossings: usize, spreader: &mut Workload) -> Result<Row> {
    let objects = cgroups * PER_CGROUP;
    let metric = |name: &str| -> Result<f64> {
        let text = http_get("/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .with_context(|| format!("no {name} in /metrics"))
    };
    // Let a few agent rounds run at this size before reading their cost.
    std::thread::sleep(Duration::from_millis(500));
    let sample = Duration::from_secs_f64(median(
        (0..5).map(|_| metric("pincg_sample_duration_seconds")).collect::<Result<_>>()?,
    ));
    let rss = metric("pincg_agent_resident_bytes")? as u64;
    let mut scrape_bytes = 0;
    let scrape = median(
        (0..5)
            .map(|_| {
                let t = Instant::now();
                scrape_bytes = http_get("/metrics")?.len();
                Ok(t.elapsed())
            })
            .collect::<Result<_>>()?,
    );
    let status = median((0..3).map(|_| timed(&["status"])).collect::<Result<_>>()?);
    let explain = median((0..3).map(|_| timed(&["explain", "--json", "/"])).collect::<Result<_>>()?);
    let read_rate = objects as f64 / explain.as_secs_f64();

    // pincg set: time to in force, as the command reports it.
    let set = median(
        (0..5)
            .map(|i| {
                let out = pincg_json(&["set", "--json", &format!("/{DIR}/c0"), "max", &format!("{}M", 1 + i)])?;
                Ok(Duration::from_millis(out["in_force_after_ms"].as_u64().context("set did not wait")?))
            })
            .collect::<Result<_>>()?,
    );

    // A pins.high crossing: c1 holds PER_CGROUP pages (plus one per earlier
    // crossing); high at that, one more page crosses it.
    let c1 = Cgroup { rel: format!("{DIR}/c1") };
    let held = (PER_CGROUP + crossings) as u64 * PAGE;
    pincg_json(&["set", "--json", &format!("/{DIR}/c1"), "high", &held.to_string()])?;
    let before = fs::read_to_string(c1.mirror("pins.events.local"))?;
    let started = Instant::now();
    spreader.run(&format!("spread /sys/fs/cgroup/{DIR} 1 2 1"))?;
    wait_for("the crossing in pins.events.local", || {
        let now = fs::read_to_string(c1.mirror("pins.events.local")).unwrap_or_default();
        (now != before, now)
    })?;
    let high = started.elapsed();
    Ok(Row { cgroups, objects, sample, rss, scrape, scrape_bytes, status, read_rate, set, high })
}

fn timed(args: &[&str]) -> Result<Duration> {
    let t = Instant::now();
    let out = Command::new(sibling_binary("pincg")?).args(args).output()?;
    ensure!(out.status.success(), "pincg {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    Ok(t.elapsed())
}

fn pincg_json(args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new(sibling_binary("pincg")?).args(args).output()?;
    ensure!(out.status.success(), "pincg {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn print_table(rows: &[Row]) {
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let met = |ok: bool| if ok { "yes" } else { "NO" };
    println!(
        "\n{:>8} {:>8} {:>10} {:>9} {:>22} {:>10} {:>14} {:>9} {:>10}",
        "cgroups", "objects", "sample", "RSS", "scrape (size)", "status", "ledger read/s", "set", "high seen"
    );
    for r in rows {
        println!(
            "{:>8} {:>8} {:>10} {:>6} MiB {:>12} ({:>5} KiB) {:>10} {:>14.0} {:>9} {:>10}",
            r.cgroups,
            r.objects,
            ms(r.sample),
            r.rss >> 20,
            ms(r.scrape),
            r.scrape_bytes >> 10,
            ms(r.status),
            r.read_rate,
            ms(r.set),
            ms(r.high)
        );
    }
    if let Some(r) = rows.last() {
        println!("\ntargets at {} cgroups / {} objects:", r.cgroups, r.objects);
        println!("  RSS <= 64 MiB: {} MiB, met {}", r.rss >> 20, met(r.rss <= RSS_TARGET));
        println!("  /metrics scrape <= 50 ms: {}, met {}", ms(r.scrape), met(r.scrape <= SCRAPE_TARGET));
        println!("  pincg status <= 200 ms: {}, met {}", ms(r.status), met(r.status <= STATUS_TARGET));
        println!("  ledger read >= 200000 objects/s: {:.0}, met {}", r.read_rate, met(r.read_rate >= READ_RATE_TARGET));
        println!("  pincg set in force <= 100 ms: {}, met {}", ms(r.set), met(r.set <= CONTROL_TARGET));
        println!(
            "  pins.high crossing in pins.events <= 100 ms: {}, met {}",
            ms(r.high),
            met(r.high <= CONTROL_TARGET)
        );
    }
}
