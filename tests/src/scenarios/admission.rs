//! Admission under attack: a request claiming 1 TiB costs what the
//! kernel's own rejection costs (not a page walk of the claim), and
//! concurrent requests of one cgroup cannot pass against the same headroom
//! (admission reserves). Claims go to VFIO MAP_DMA, AF_XDP XDP_UMEM_REG, RDMA
//! REG_MR (soft-RoCE) and,
//! on 7.x, io_uring registrations (1 GiB iovecs); the race to the budget is
//! run by threads (VFIO) and by processes (AF_XDP, io_uring on 7.x).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::devices::vfio_edu_group;
use crate::rdma_setup::{soft_roce, wait_for_uverbs};
use crate::scenario::{
    expect_hook, expect_metric, expect_no_drift, io_uring_refused, kernel_pinned_pages, ledger_event_count, median,
    pincg, skip, step, tool, Agent, Cgroup, Workload,
};

const MIB: u64 = 1 << 20;
const CLAIM: &str = "1T";
const ROUNDS: u32 = 20;
/// Concurrent 32 MiB requests under a 64 MiB pins.max.
const RACERS: usize = 4;

/// One workload that can make a 1 TiB claim, and the name of its source.
struct Claimer {
    source: &'static str,
    workload: Workload,
}

/// `min_ns` and `error` of a `claim` report.
pub(super) fn claim(w: &mut Workload, report: &str) -> Result<(u64, String)> {
    w.run(&format!("claim {CLAIM} {ROUNDS} {report}"))?;
    let text = std::fs::read_to_string(report).with_context(|| report.to_string())?;
    let rest = text.strip_prefix("min_ns ").with_context(|| format!("{report}: {text:?}"))?;
    let (ns, error) = rest.split_once(" error ").with_context(|| format!("{report}: {text:?}"))?;
    Ok((ns.parse().with_context(|| format!("{report}: {text:?}"))?, error.trim().to_string()))
}

/// One refused 1 TiB claim by `w`.
fn claim_once(w: &mut Workload) -> Result<()> {
    w.run(&format!("claim {CLAIM} 1 /tmp/claim-once"))
}

/// The ns `enforce_file_ioctl` spent per run during `call`.
fn bpf_cost(call: impl FnOnce() -> Result<()>) -> Result<u64> {
    let before = prog_stats("enforce_file_ioctl")?;
    call()?;
    let after = prog_stats("enforce_file_ioctl")?;
    Ok((after.0 - before.0) / (after.1 - before.1).max(1))
}

/// `run_time_ns` and `run_cnt` of the loaded program called `name`
/// (kernel.bpf_stats_enabled must be 1).
fn prog_stats(name: &str) -> Result<(u64, u64)> {
    let json = tool("bpftool", &["-j", "prog", "show", "name", name])?;
    let value: serde_json::Value = serde_json::from_str(&json).with_context(|| format!("bpftool: {json}"))?;
    let prog = if value.is_array() { value[0].clone() } else { value };
    let field = |f: &str| prog[f].as_u64().with_context(|| format!("bpftool prog show name {name}: no {f} in {prog}"));
    Ok((field("run_time_ns")?, field("run_cnt")?))
}

pub fn run() -> Result<()> {
    let tenant = Cgroup::create("pincg-admission/tenant")?;
    let group = vfio_edu_group()?.to_string_lossy().into_owned();
    let (io_uring_refusal, _) = io_uring_refused();
    let mut claimers = Vec::new();
    let mut vfio = Workload::spawn("claim-vfio", &tenant, &["vfio"])?;
    vfio.run(&format!("open {group}"))?;
    claimers.push(Claimer { source: "vfio", workload: vfio });
    let mut xsk = Workload::spawn("claim-xdp", &tenant, &["xdp"])?;
    xsk.run("socket")?;
    claimers.push(Claimer { source: "xdp", workload: xsk });
    if io_uring_refusal {
        let mut ring = Workload::spawn("claim-io_uring", &tenant, &["io_uring"])?;
        ring.run("ring")?;
        claimers.push(Claimer { source: "io_uring", workload: ring });
    } else {
        skip("a 1 TiB io_uring claim", "io_uring has no refusal point before 7.0: nothing walks its claim");
    }
    let mut mr = Workload::spawn("claim-rdma", &tenant, &["rdma"])?;
    mr.run(&format!("open {}", soft_roce()?))?;
    claimers.push(Claimer { source: "rdma", workload: mr });
    skip(
        "a 1 TiB IOMMU_IOAS_MAP claim",
        "Debian's kernels have no iommufd (scenario iommufd runs on the custom kernel)",
    );

    step("1 TiB claims without pincg: the kernel's own rejection, timed");
    let mut bare = Vec::new();
    for c in &mut claimers {
        let (ns, error) = claim(&mut c.workload, &format!("/tmp/claim-{}-bare", c.source))?;
        println!("   {}: {ns} ns, {error}", c.source);
        bare.push(ns);
    }

    step("a verbs request padded past the attributes pincg reads: the kernel's own answer");
    let uverbs = wait_for_uverbs()?;
    let padded = format!("padded {uverbs}");
    let mut padder = Workload::spawn("padded-rdma", &tenant, &["rdma"])?;
    match padder.try_run(&padded)? {
        Err(e) if !e.contains("Cannot allocate memory") => println!("   {e}"),
        other => bail!("a padded INVOKE_WRITE without pincg: {other:?}, not the kernel's own error"),
    }

    let _agent = Agent::start_with(&["--mode", "enforce"])?;
    for hook in ["vfio:refuse", "xdp:refuse", "vfio:pin", "rdma:register"] {
        expect_hook(hook, 1)?;
    }
    println!("   {}", pincg(&["set", "/pincg-admission/tenant", "max", "64M"])?.trim());
    tool("sysctl", &["-q", "kernel.bpf_stats_enabled=1"])?;

    step("the same claims under a 64 MiB pins.max: refused at O(1), within 2x the kernel's time + 1 ms");
    // The BPF cost of VFIO's claims, compared with its real maps below
    // (an RDMA request costs its uverbs parse besides, whatever it claims).
    for (c, bare_ns) in claimers.iter_mut().zip(&bare) {
        let (ns, error) = claim(&mut c.workload, &format!("/tmp/claim-{}-pincg", c.source))?;
        println!("   {}: {ns} ns (without pincg {bare_ns} ns), {error}", c.source);
        ensure!(
            error.contains("Cannot allocate memory"),
            "{}: a 1 TiB claim failed with {error:?}, not ENOMEM",
            c.source
        );
        ensure!(ns <= 2 * bare_ns + 1_000_000, "{}: a 1 TiB claim took {ns} ns, over 2 x {bare_ns} + 1 ms", c.source);
        expect_metric(&format!("pincg_refusals_total{{outcome=\"refused\",source=\"{}\"}} {ROUNDS}", c.source))?;
    }

    step("the BPF cost of a request follows what it pins, not what it claims");
    // Interleaved one by one, each call's cost read from the program's
    // stats, compared by median: the first calls after attaching (TCG
    // translating the JIT image) and a host preemption land on both sides
    // or on neither, where a mean over runs in a row put them on one.
    let vfio = &mut claimers[0].workload;
    let (mut claims, mut maps) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        claims.push(bpf_cost(|| claim_once(vfio))?);
        maps.push(bpf_cost(|| vfio.run(&format!("map {:#x} 2M", (u64::from(i) + 1) << 32)))?);
    }
    let (claim_ns, real_ns) = (median(claims), median(maps));
    println!("   enforce_file_ioctl: median {claim_ns} ns per 1 TiB claim, {real_ns} ns per real 2 MiB map");
    ensure!(
        claim_ns <= 2 * real_ns + 20_000,
        "a refused 1 TiB claim cost {claim_ns} ns in BPF, a real 2 MiB map {real_ns} ns"
    );
    tenant.expect_current(u64::from(ROUNDS) * 2 * MIB)?;

    step("from a child cgroup that pins nothing, a claim of 2^64 - 4 KiB (it would wrap past the 40 MiB the tenant pins) is refused; reservations stay exact");
    let child = Cgroup::create("pincg-admission/tenant/child")?;
    child.add(vfio.pid())?;
    vfio.expect_err("map-wrapping 18446744073709547520", "Cannot allocate memory")?;
    vfio.run("map 0x1500000000 2M")?;
    vfio.expect_err("map 0x1600000000 32M", "Cannot allocate memory")?;
    tenant.expect_current(u64::from(ROUNDS + 1) * 2 * MIB)?;

    step("a verbs request padded past the attributes pincg reads is refused in a limited cgroup");
    padder.expect_err(&padded, "Cannot allocate memory")?;
    vfio.run("close")?;
    tenant.expect_current(0)?;

    step("no soft lockup nor RCU stall in the kernel log");
    let dmesg = tool("dmesg", &[])?;
    for needle in ["soft lockup", "rcu_sched self-detected stall", "rcu: INFO"] {
        ensure!(!dmesg.contains(needle), "dmesg reports {needle:?}");
    }
    drop(claimers);

    reservations(&group, io_uring_refusal)?;
    expect_no_drift()
}

/// RACERS workloads of `kind` in `cg`, each sent `setup` first.
fn racers(cg: &Cgroup, kind: &str, setup: &str) -> Result<Vec<Workload>> {
    (0..RACERS)
        .map(|i| {
            let mut w = Workload::spawn(&format!("race-{kind}-{i}"), cg, &[kind])?;
            w.run(setup)?;
            Ok(w)
        })
        .collect()
}

/// Each racer's reply to one command.
type Replies = Vec<std::result::Result<(), String>>;

/// `command` sent to every racer at once while `sampled` watches: the
/// replies and the peaks.
fn race(cg: &Cgroup, racers: &mut [Workload], command: &str) -> Result<(Replies, (u64, u64))> {
    let mut replies = Vec::new();
    let peaks = sampled(cg, || {
        replies = all_at_once(racers, command)?;
        Ok(())
    })?;
    Ok((replies, peaks))
}

/// Samples what the kernel holds pinned (the cgroup is the node's only
/// pinner) and the cgroup's pins.current while `race` runs; returns the
/// highest of each.
fn sampled(cg: &Cgroup, race: impl FnOnce() -> Result<()>) -> Result<(u64, u64)> {
    let base = kernel_pinned_pages()?;
    let current = cg.mirror("pins.current");
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let (mut kernel, mut mirror) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let pages = kernel_pinned_pages().unwrap_or(base) - base;
                kernel = kernel.max(pages.max(0) as u64 * 4096);
                let text = std::fs::read_to_string(&current).unwrap_or_default();
                mirror = mirror.max(text.trim().parse().unwrap_or(0));
            }
            (kernel, mirror)
        });
        let outcome = race();
        stop.store(true, Ordering::Relaxed);
        let peaks = sampler.join().expect("the sampler does not panic");
        outcome.map(|()| peaks)
    })
}

/// Two successes and `RACERS - 2` ENOMEM among `replies`: each admission
/// adds its bytes to `reserved` atomically and checks the sum it made, so
/// the first two always fit and no later one does, however they interleave.
fn outcome(what: &str, replies: &[std::result::Result<(), String>]) -> Result<usize> {
    let ok = replies.iter().filter(|r| r.is_ok()).count();
    let refused = replies.iter().filter(|r| matches!(r, Err(e) if e.contains("Cannot allocate memory"))).count();
    println!("   {what}: {ok} admitted, {refused} refused");
    ensure!(ok + refused == replies.len(), "{what}: a request failed otherwise: {replies:?}");
    ensure!(ok == 2, "{what}: {ok} requests of 32 MiB passed a 64 MiB pins.max, not 2");
    Ok(ok)
}

/// The same `command` sent to every workload at once; their answers.
fn all_at_once(workloads: &mut [Workload], command: &str) -> Result<Replies> {
    for w in workloads.iter_mut() {
        w.send(command)?;
    }
    workloads.iter_mut().map(|w| w.reply(command)).collect()
}

fn reservations(group: &str, io_uring_refusal: bool) -> Result<()> {
    let cg = Cgroup::create("pincg-admission/race")?;
    println!("   {}", pincg(&["set", "/pincg-admission/race", "max", "64M"])?.trim());
    let within = |what: &str, (kernel, mirror): (u64, u64)| -> Result<()> {
        println!("   {what}: at most {kernel} B pinned by the kernel, {mirror} B in pins.current");
        ensure!(kernel <= 64 * MIB, "{what}: the kernel held {kernel} B for a 64 MiB pins.max");
        ensure!(mirror <= 64 * MIB, "{what}: pins.current reached {mirror} B over a 64 MiB pins.max");
        Ok(())
    };

    step("threads: 4 threads map 32 MiB each at once (VFIO): at most 2 pass, the rest get ENOMEM");
    let mut vfio = Workload::spawn("race-vfio", &cg, &["vfio"])?;
    vfio.run(&format!("open {group}"))?;
    let report = "/tmp/pincg-map-threads";
    let peaks = sampled(&cg, || vfio.run(&format!("map-threads {RACERS} 32M {report}")))?;
    let text = std::fs::read_to_string(report).with_context(|| report.to_string())?;
    let words: Vec<&str> = text.split_whitespace().collect();
    ensure!(words.len() == 4, "{report}: {text:?}");
    let (mapped, refused): (usize, usize) = (words[1].parse()?, words[3].parse()?);
    let replies: Vec<_> =
        (0..RACERS).map(|i| if i < mapped { Ok(()) } else { Err("Cannot allocate memory".into()) }).collect();
    ensure!(mapped + refused == RACERS, "{report}: {text:?}");
    let ok = outcome("VFIO threads", &replies)?;
    within("VFIO threads", peaks)?;
    cg.expect_current(ok as u64 * 32 * MIB)?;

    step("a reservation the kernel did not use is returned: a MAP_DMA at a mapped iova fails, the budget is intact");
    vfio.run("close")?;
    cg.expect_current(0)?;
    vfio.run(&format!("open {group}"))?;
    vfio.run("map 0x100000000 32M")?;
    ensure!(vfio.try_run("map 0x100000000 32M")?.is_err(), "a second MAP_DMA at the same iova succeeded");
    vfio.run("map 0x200000000 32M")?;
    cg.expect_current(64 * MIB)?;
    vfio.run("close")?;
    cg.expect_current(0)?;

    step("processes: 4 processes register a 32 MiB AF_XDP umem each at once: at most 2 pass");
    let mut sockets = racers(&cg, "xdp", "socket")?;
    let skipped_before = ledger_event_count("program_skipped")?;
    let (replies, peaks) = race(&cg, &mut sockets, "umem 32M")?;
    let ok = outcome("AF_XDP processes", &replies)?;
    within("AF_XDP processes", peaks)?;
    if let Err(e) = cg.expect_current(ok as u64 * 32 * MIB) {
        // 7.x preempts fexit programs: a task preempted inside AF_XDP's
        // charge makes the kernel skip it for the next task on that CPU. The
        // miss is counted (program_skipped), never silent; its release is
        // then an unknown one and leaves nothing behind.
        let skipped = ledger_event_count("program_skipped")? - skipped_before;
        ensure!(skipped > 0, "{e:#}");
        skip(
            "AF_XDP processes: every admitted umem charged",
            &format!(
                "the kernel skipped a charge program {skipped} time(s) (an fexit program preempted; \
                 docs/limitations.md, \"7.2, fentry/fexit and preemption\"): {e}"
            ),
        );
    }
    drop(sockets);
    cg.expect_current(0)?;

    if io_uring_refusal {
        step("processes: 4 processes register a 32 MiB io_uring buffer each at once: at most 2 pass");
        let mut rings = racers(&cg, "io_uring", "ring")?;
        let skipped_before = ledger_event_count("program_skipped")?;
        let (replies, peaks) = race(&cg, &mut rings, "register 32M")?;
        let admitted = replies.iter().filter(|r| r.is_ok()).count();
        // 7.x preempts sleepable BPF programs: a task preempted inside the
        // fmod_ret.s refusal point makes the kernel skip it for the next
        // task on that CPU (recursion protection), which then registers
        // unchecked. That hole is counted (program_skipped), never silent.
        std::thread::sleep(Duration::from_millis(300));
        let skipped = ledger_event_count("program_skipped")? - skipped_before;
        if admitted > 2 && skipped > 0 {
            skip(
                "io_uring processes: at most 2 pass",
                &format!(
                    "{admitted} of {RACERS} admitted: the kernel skipped a refusal program {skipped} time(s) \
                     (a preempted sleepable program; docs/limitations.md, \"Refusal points\")"
                ),
            );
        } else {
            outcome("io_uring processes", &replies)?;
            within("io_uring processes", peaks)?;
        }
        cg.expect_current(admitted as u64 * 32 * MIB)?;
        drop(rings);
        cg.expect_current(0)?;
    } else {
        skip(
            "concurrent io_uring registrations",
            "io_uring has no refusal point before 7.0 (its overruns are acted on)",
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    // Nothing is left reserved: the whole budget is there again.
    let mut last = Workload::spawn("race-last", &cg, &["xdp"])?;
    last.run("socket")?;
    last.run("umem 64M")?;
    cg.expect_current(64 * MIB)?;
    Ok(())
}
