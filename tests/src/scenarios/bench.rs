//! `bench`: what pincg costs, measured rather than asserted. Every
//! measurement is timed per iteration without and with pincg in one guest
//! boot, and the ratio of the two medians is printed with its spread next
//! to the target of the performance issue (docs/performance.md). A missed
//! target is reported, never failed: only a real error (a workload's, the
//! agent's) fails the scenario.
//!
//! Fairness: blocks run in the order ABBA ABBA ABBA ABBA, where A has nothing
//! of pincg in the kernel (`pincg unload`, then no pincg program left) and
//! B runs `pincg agent --mode enforce` with every hook attached, the
//! enforcement LSM included. The mirrored order cancels a drift that is
//! linear over the run. Every block runs every measurement with the same
//! counts, after one untimed warm-up iteration each, in [`ROUNDS`] rounds
//! that take turns between the measurements (a burst of load on the host
//! spreads over all of them); a side's median is over all the iterations
//! of its blocks. During the blocks only, the measuring process sits in a
//! cgroup four levels deep with a pins.max on one ancestor (like a
//! Kubernetes pod), so the charge and the admit paths walk a realistic
//! hierarchy and find a limit; the agent runs outside it. Each B block
//! prints the agent's own CPU use: it is part of "with pincg".
//!
//! During the blocks the measuring process is also pinned to the last CPU
//! (the agent, started between blocks, is not). Unpinned, under TCG, a
//! READ_FIXED of 64 KiB took 70-80 µs whenever nothing else in the guest
//! did any work and 47 µs while another process did (a running agent
//! among them), whatever pincg had attached: that artefact alone read as a
//! 0.7 ratio on the data path. Pinned, it takes 46 µs either way.
//!
//! After the last B block, one more round of every measurement runs with
//! `kernel.bpf_stats_enabled=1` (not part of the table): how often each
//! pincg program ran per iteration and for how long, to tell the programs'
//! own cost from the attachment mechanism's (kprobe, trampoline).
//!
//! `PINCG_BENCH_SCALE` (default 1) multiplies every iteration count, e.g.
//! `--env PINCG_BENCH_SCALE=0.2` for a quick look.

use std::fmt::Write as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::devices::vfio_edu_group;
use crate::rdma_setup::soft_roce;
use crate::scenario::{expect_hook, expect_metric, http_get, pincg, step, wait_for, Agent, Cgroup};
use crate::workload::io_uring::Rings;
use crate::workload::rdma::Rdma;
use crate::workload::vfio::Vfio;
use crate::workload::{os_error, Pinner};

/// Without pincg (A) or with the agent and every hook (B).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Without,
    With,
}
use Side::{With, Without};

/// The order of the blocks: ABBA ABBA ABBA ABBA.
const PLAN: [Side; 16] = [
    Without, With, With, Without, Without, With, With, Without, Without, With, With, Without, Without, With, With,
    Without,
];
/// Rounds per block: each round runs every measurement's `per_round`.
const ROUNDS: usize = 10;

/// What one iteration does.
#[derive(Clone, Copy)]
enum Op {
    /// io_uring register + unregister of one buffer of this size.
    IoUring(&'static str),
    /// VFIO type1 map + unmap of this size.
    Vfio(&'static str),
    /// RDMA ibv_reg_mr + ibv_dereg_mr of this size.
    Rdma(&'static str),
    /// [`IOCTL_BATCH`] × ioctl(FIONREAD) on a pipe; the sample is per call.
    Ioctl,
    /// One io_uring READ_FIXED of [`READ_SIZE`] from a tmpfs file into a
    /// registered buffer, submitted and reaped.
    ReadFixed,
}

#[derive(Clone, Copy)]
enum Target {
    /// The ratio of medians must be at most this.
    AtMost(f64),
    /// 1.00 within noise: the ratio is off 1 by no more than the A blocks'
    /// medians differ among themselves (max - min over the A median: the
    /// same configuration measured again), and at least [`NOISE_FLOOR`].
    Noise,
}

/// A ratio this close to 1 counts as 1 whatever the A blocks say.
const NOISE_FLOOR: f64 = 0.01;

struct Spec {
    name: &'static str,
    short: &'static str,
    op: Op,
    /// Timed iterations per round (times `PINCG_BENCH_SCALE`, at least 1).
    per_round: usize,
    target: Target,
}

const fn spec(name: &'static str, short: &'static str, op: Op, per_round: usize, target: Target) -> Spec {
    Spec { name, short, op, per_round, target }
}

use Target::{AtMost, Noise};

const SPECS: &[Spec] = &[
    spec("io_uring register+unregister 64 MiB", "uring-64M", Op::IoUring("64M"), 4, AtMost(1.02)),
    spec("VFIO map+unmap 64 MiB", "vfio-64M", Op::Vfio("64M"), 3, AtMost(1.02)),
    spec("RDMA reg+dereg MR 64 MiB", "rdma-64M", Op::Rdma("64M"), 4, AtMost(1.02)),
    spec("io_uring register+unregister 4 KiB", "uring-4K", Op::IoUring("4K"), 2000, AtMost(1.10)),
    spec("VFIO map+unmap 4 KiB", "vfio-4K", Op::Vfio("4K"), 1000, AtMost(1.10)),
    spec("RDMA reg+dereg MR 4 KiB", "rdma-4K", Op::Rdma("4K"), 500, AtMost(1.10)),
    spec("ioctl(FIONREAD) on a pipe, per call", "ioctl", Op::Ioctl, 30, AtMost(1.05)),
    spec("io_uring READ_FIXED 64 KiB (tmpfs)", "read-fixed", Op::ReadFixed, 500, Noise),
];

/// ioctl calls per ioctl sample.
const IOCTL_BATCH: u32 = 1000;
const READ_SIZE: &str = "64K";
const DATA_FILE: &str = "/dev/shm/pincg-bench-data";
const IOVA: &str = "0x100000";
/// The measuring process's cgroup, and the ancestor that has a pins.max
/// (high enough never to refuse what the bench pins).
const TENANT: &str = "pincg-bench/qos/pod/container";
const LIMITED: &str = "/pincg-bench/qos/pod";
const LIMIT: &str = "1G";
/// Every hook the measurements go through, attached before a B block.
const HOOKS: &[&str] = &[
    "io_uring:register",
    "io_uring:release",
    "vfio:pin",
    "vfio:release",
    "vfio:refuse",
    "rdma:register",
    "rdma:release",
    "rdma:refuse",
];
/// The names of pincg's BPF programs start with one of these (their
/// source's object name); none may be loaded in an A block.
const PROGRAM_PREFIXES: &[&str] = &["enforce_", "io_uring_", "iommufd_", "rdma_", "vfio_", "xdp_"];
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
const KPROBE_LIST: &str = "/sys/kernel/debug/kprobes/list";

pub fn run() -> Result<()> {
    let started = Instant::now();
    let scale: f64 = match std::env::var("PINCG_BENCH_SCALE") {
        Ok(text) => text.parse().with_context(|| format!("PINCG_BENCH_SCALE={text:?} is not a number"))?,
        Err(_) => 1.0,
    };
    let counts: Vec<usize> = SPECS.iter().map(|s| ((s.per_round as f64 * scale).round() as usize).max(1)).collect();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    println!(
        "   kernel {kernel}, {} build, {} CPUs, blocks {}, scale {scale}",
        if cfg!(debug_assertions) { "debug" } else { "release" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        PLAN.iter().map(|s| if *s == With { "B" } else { "A" }).collect::<String>(),
    );

    step("devices: VFIO (edu behind the emulated IOMMU), soft-RoCE; a tmpfs file to read");
    let group = vfio_edu_group()?.to_string_lossy().into_owned();
    let device = soft_roce()?;
    std::fs::write(DATA_FILE, vec![0x5a; crate::workload::parse_size(READ_SIZE).map_err(anyhow::Error::msg)?])
        .with_context(|| format!("writing {DATA_FILE}"))?;
    let tenant = Cgroup::create(TENANT)?;
    let mut bench = Bench::open(&group, &device)?;
    let all_cpus = affinity()?;
    // SAFETY: CPU_ISSET reads a bit of a set we own.
    let last_cpu = (0..libc::CPU_SETSIZE as usize).rev().find(|&c| unsafe { libc::CPU_ISSET(c, &all_cpus) });
    let last_cpu = last_cpu.context("this process may run on no CPU")?;
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET sets a bit.
    let mut measuring: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(last_cpu, &mut measuring) };
    println!("   blocks run in {TENANT}, pinned to CPU {last_cpu}");

    let mut results: Vec<Samples> = SPECS.iter().map(|_| Samples::default()).collect();
    let mut agent: Option<Agent> = None;
    let last_with = PLAN.iter().rposition(|s| *s == With);
    for (i, &side) in PLAN.iter().enumerate() {
        match side {
            With if agent.is_none() => {
                step("B: pincg agent --mode enforce, every hook attached");
                agent = Some(start_agent()?);
            }
            Without if i == 0 || agent.is_some() => {
                step("A: no agent, pincg unloaded, no pincg program in the kernel");
                if let Some(agent) = agent.take() {
                    agent.kill()?;
                }
                unload()?;
            }
            _ => {}
        }
        let block_start = Instant::now();
        let agent_cpu = agent.as_ref().map(|a| cpu_time(a.pid())).transpose()?;
        enter(&tenant, &measuring)?;
        let outcome = bench.block(side, &counts, &mut results);
        leave(&all_cpus)?;
        let line = outcome?;
        let seconds = block_start.elapsed().as_secs_f64();
        let agent_share = match (&agent, agent_cpu) {
            (Some(a), Some(before)) => format!(", agent CPU {:.1}%", 100.0 * (cpu_time(a.pid())? - before) / seconds),
            _ => String::new(),
        };
        println!("   block {}/{} {side:?}: {line} ({seconds:.1} s{agent_share})", i + 1, PLAN.len());
        if side == With {
            check_ledger()?;
        }
        if Some(i) == last_with {
            step("diagnostic round (not in the table): pincg programs' runs and run time, kernel.bpf_stats_enabled=1");
            enter(&tenant, &measuring)?;
            let outcome = bench.diagnose(&counts);
            leave(&all_cpus)?;
            outcome?;
            check_ledger()?;
        }
    }
    bench.close()?;
    drop(agent);

    step("results: ratio of medians, with pincg over without");
    let summary = report(&results, &counts, started.elapsed());
    println!("{summary}");
    Ok(())
}

/// The workloads, called in-process, and what they need.
struct Bench {
    rings: Rings,
    vfio: Vfio,
    rdma: Rdma,
    /// Index of the next RDMA registration (`dereg` takes it).
    next_mr: usize,
    /// A pipe: FIONREAD on its read end.
    pipe_read: OwnedFd,
    _pipe_write: OwnedFd,
}

impl Bench {
    fn open(group: &str, device: &str) -> Result<Bench> {
        let mut vfio = Vfio::default();
        vfio.command("open", &[group]).map_err(|e| anyhow!("vfio open {group}: {e}"))?;
        let mut rdma = Rdma::default();
        rdma.command("open", &[device]).map_err(|e| anyhow!("rdma open {device}: {e}"))?;
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array we own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            bail!(os_error("pipe2"));
        }
        // SAFETY: the kernel just returned these descriptors to us.
        let (pipe_read, pipe_write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Bench { rings: Rings::default(), vfio, rdma, next_mr: 0, pipe_read, _pipe_write: pipe_write })
    }

    /// One block: one warm-up iteration of every measurement, then
    /// [`ROUNDS`] rounds of `counts[i]` timed iterations of each. Returns a
    /// one-line summary of the block's medians.
    fn block(&mut self, side: Side, counts: &[usize], results: &mut [Samples]) -> Result<String> {
        self.open_rings()?;
        let mut blocks: Vec<Vec<f64>> = counts.iter().map(|c| Vec::with_capacity(c * ROUNDS)).collect();
        for spec in SPECS {
            self.timed(spec)?;
        }
        for _ in 0..ROUNDS {
            for ((spec, &count), block) in SPECS.iter().zip(counts).zip(blocks.iter_mut()) {
                for _ in 0..count {
                    block.push(self.timed(spec)?);
                }
            }
        }
        self.close_rings()?;
        let mut line = String::new();
        for ((spec, block), samples) in SPECS.iter().zip(blocks).zip(results.iter_mut()) {
            let _ = write!(line, "{} {} ", spec.short, ns(percentile(&sorted(&block), 0.5)));
            samples.add(side, block);
        }
        Ok(line.trim_end().to_string())
    }

    /// One round of every measurement with BPF run-time statistics on:
    /// per measurement, each pincg program's runs per iteration and mean
    /// run time, and their total per iteration.
    fn diagnose(&mut self, counts: &[usize]) -> Result<()> {
        let list = std::fs::read_to_string(KPROBE_LIST).unwrap_or_default();
        for line in list.lines() {
            println!("   kprobe: {line}");
        }
        std::fs::write(BPF_STATS, "1").with_context(|| format!("writing 1 to {BPF_STATS}"))?;
        let outcome = (|| -> Result<()> {
            self.open_rings()?;
            for (spec, &count) in SPECS.iter().zip(counts) {
                self.timed(spec)?;
                let before = program_stats()?;
                for _ in 0..count {
                    self.timed(spec)?;
                }
                let after = program_stats()?;
                let iterations = count as f64 * if matches!(spec.op, Op::Ioctl) { f64::from(IOCTL_BATCH) } else { 1.0 };
                let mut total = 0.0;
                let mut parts = Vec::new();
                for (id, (name, cnt, time)) in &after {
                    let (cnt0, time0) = before.get(id).map_or((0, 0), |(_, c, t)| (*c, *t));
                    let (runs, run_ns) = (cnt.saturating_sub(cnt0), time.saturating_sub(time0));
                    if runs > 0 {
                        total += run_ns as f64;
                        parts.push(format!(
                            "{name} {:.2}/iter x {:.0} ns",
                            runs as f64 / iterations,
                            run_ns as f64 / runs as f64
                        ));
                    }
                }
                println!("   {}: BPF {} per iteration: {}", spec.short, ns(total / iterations), parts.join(", "));
            }
            self.close_rings()
        })();
        std::fs::write(BPF_STATS, "0").with_context(|| format!("writing 0 to {BPF_STATS}"))?;
        outcome
    }

    fn open_rings(&mut self) -> Result<()> {
        self.rings.command("ring", &[]).map_err(|e| anyhow!("io_uring ring: {e}"))?;
        self.rings.command("data-ring", &[DATA_FILE, READ_SIZE]).map_err(|e| anyhow!("io_uring data-ring: {e}"))
    }

    fn close_rings(&mut self) -> Result<()> {
        self.rings.command("close", &[]).map_err(|e| anyhow!("io_uring close: {e}"))
    }

    /// One timed iteration of `spec`, its error named after it.
    fn timed(&mut self, spec: &Spec) -> Result<f64> {
        self.once(spec.op).map_err(|e| anyhow!("{}: {e}", spec.name))
    }

    /// One timed iteration of `op`, in nanoseconds (per call for ioctl).
    fn once(&mut self, op: Op) -> Result<f64, String> {
        let dereg = self.next_mr.to_string();
        let start = Instant::now();
        match op {
            Op::IoUring(size) => {
                self.rings.command("register-reuse", &[size])?;
                self.rings.command("unregister", &[])?;
            }
            Op::Vfio(size) => {
                self.vfio.command("map-reuse", &[IOVA, size])?;
                self.vfio.command("unmap", &[IOVA, size])?;
            }
            Op::Rdma(size) => {
                self.rdma.command("reg-reuse", &[size])?;
                self.next_mr += 1;
                self.rdma.command("dereg", &[&dereg])?;
            }
            Op::Ioctl => {
                let fd = self.pipe_read.as_raw_fd();
                for _ in 0..IOCTL_BATCH {
                    let mut queued: libc::c_int = 0;
                    // SAFETY: FIONREAD writes one int, which we own.
                    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) } != 0 {
                        return Err(os_error("ioctl(FIONREAD)"));
                    }
                }
                return Ok(start.elapsed().as_nanos() as f64 / f64::from(IOCTL_BATCH));
            }
            Op::ReadFixed => self.rings.command("read-fixed", &["1"])?,
        }
        Ok(start.elapsed().as_nanos() as f64)
    }

    fn close(&mut self) -> Result<()> {
        self.vfio.command("close", &[]).map_err(|e| anyhow!("vfio close: {e}"))?;
        self.rdma.command("close", &[]).map_err(|e| anyhow!("rdma close: {e}"))
    }
}

/// CPU time (user + system) used so far by process `pid`, in seconds.
fn cpu_time(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name (which may hold spaces): state is the
    // 3rd field of the line, utime and stime the 14th and 15th.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).context("malformed /proc/PID/stat");
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) / per_second)
}

/// This process's CPU affinity.
fn affinity() -> Result<libc::cpu_set_t> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most the size given into the set.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        bail!(os_error("sched_getaffinity"));
    }
    Ok(set)
}

fn set_affinity(set: &libc::cpu_set_t) -> Result<()> {
    // SAFETY: the kernel reads the set we own.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) } != 0 {
        bail!(os_error("sched_setaffinity"));
    }
    Ok(())
}

/// Into the tenant's cgroup, onto the measuring CPU.
fn enter(tenant: &Cgroup, cpu: &libc::cpu_set_t) -> Result<()> {
    tenant.add(std::process::id())?;
    set_affinity(cpu)
}

/// Back to the root cgroup and every CPU, where the agent and the tools
/// this process starts between blocks run.
fn leave(all_cpus: &libc::cpu_set_t) -> Result<()> {
    Cgroup { rel: String::new() }.add(std::process::id())?;
    set_affinity(all_cpus)
}

/// Start the agent in enforce mode, wait until every hook the bench goes
/// through is attached, and put the ancestor's pins.max in force.
fn start_agent() -> Result<Agent> {
    let agent = Agent::start_with(&["--mode", "enforce"])?;
    for hook in HOOKS {
        expect_hook(hook, 1)?;
    }
    // `pincg set` waits 3 s for the agent to put the limit in force, which
    // a loaded host can make it miss: the file is written, so try again.
    for attempt in 1.. {
        match pincg(&["set", LIMITED, "max", LIMIT]) {
            Ok(out) => {
                println!("   {}", out.trim());
                break;
            }
            Err(e) if attempt < 5 => println!("   (attempt {attempt}) {e:#}"),
            Err(e) => return Err(e),
        }
    }
    Ok(agent)
}

/// `pincg unload` (the agent is gone: its links are only pinned), then
/// wait until no pincg program is left in the kernel.
fn unload() -> Result<()> {
    pincg(&["unload"])?;
    wait_for("no pincg BPF program loaded (bpftool prog show)", || match pincg_programs() {
        Ok(names) => (names.is_empty(), format!("{names:?}")),
        Err(e) => (false, format!("{e:#}")),
    })
}

/// The names of the loaded BPF programs that are pincg's.
fn pincg_programs() -> Result<Vec<String>> {
    Ok(loaded_programs()?.into_iter().map(|p| p.name).collect())
}

struct Program {
    id: u64,
    name: String,
    run_cnt: u64,
    run_time_ns: u64,
}

/// pincg's loaded BPF programs (`bpftool prog show`); run counts and times
/// are 0 unless kernel.bpf_stats_enabled is 1.
fn loaded_programs() -> Result<Vec<Program>> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .context("running bpftool (tests/guest/install-deps.sh installs it)")?;
    ensure!(out.status.success(), "bpftool prog show: {}", String::from_utf8_lossy(&out.stderr).trim());
    let programs: serde_json::Value = serde_json::from_slice(&out.stdout).context("parsing bpftool's JSON")?;
    let number = |p: &serde_json::Value, key: &str| p.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
    Ok(programs
        .as_array()
        .context("bpftool prog show: not a JSON array")?
        .iter()
        .filter_map(|p| {
            let name = p.get("name")?.as_str()?;
            PROGRAM_PREFIXES.iter().any(|prefix| name.starts_with(prefix)).then(|| Program {
                id: number(p, "id"),
                name: name.to_string(),
                run_cnt: number(p, "run_cnt"),
                run_time_ns: number(p, "run_time_ns"),
            })
        })
        .collect())
}

/// Program id -> (name, runs, run time in ns), in id order.
fn program_stats() -> Result<std::collections::BTreeMap<u64, (String, u64, u64)>> {
    Ok(loaded_programs()?.into_iter().map(|p| (p.id, (p.name, p.run_cnt, p.run_time_ns))).collect())
}

/// After a B block: everything pinned was released, and the agent did
/// account (charges seen); anomalies are printed, not failed.
fn check_ledger() -> Result<()> {
    expect_metric("pincg_ledger_objects 0")?;
    let metrics = http_get("/metrics")?;
    let event = |name: &str| -> u64 {
        let prefix = format!("pincg_ledger_events_total{{event=\"{name}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&prefix)?.parse().ok()).unwrap_or(0)
    };
    let (charges, releases) = (event("charge"), event("release"));
    println!(
        "   ledger since the agent started: {charges} charges, {releases} releases, \
         {} unknown releases, {} stale objects",
        event("unknown_release"),
        event("stale_object")
    );
    ensure!(charges > 0, "the agent charged nothing: its hooks did not see the bench's pins");
    Ok(())
}

/// One measurement's samples, by side, and its block medians in order.
#[derive(Default)]
struct Samples {
    without: Vec<f64>,
    with: Vec<f64>,
    blocks: Vec<(Side, f64)>,
}

impl Samples {
    fn add(&mut self, side: Side, block: Vec<f64>) {
        self.blocks.push((side, percentile(&sorted(&block), 0.5)));
        match side {
            Without => self.without.extend(block),
            With => self.with.extend(block),
        }
    }

    /// The k-th B block's median over the k-th A block's: with the ABBA
    /// order, neighbours.
    fn pair_ratios(&self) -> Vec<f64> {
        let side = |s: Side| self.blocks.iter().filter(move |(b, _)| *b == s).map(|(_, m)| *m);
        side(With).zip(side(Without)).map(|(b, a)| b / a).collect()
    }
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// Linear interpolation between closest ranks; `sorted` is not empty.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let pos = p * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// A duration in nanoseconds, in the unit that suits it.
fn ns(v: f64) -> String {
    let a = v.abs();
    if a < 1e3 {
        format!("{v:.0} ns")
    } else if a < 1e6 {
        format!("{:.2} µs", v / 1e3)
    } else if a < 1e9 {
        format!("{:.2} ms", v / 1e6)
    } else {
        format!("{:.2} s", v / 1e9)
    }
}

/// The table and the final line.
fn report(results: &[Samples], counts: &[usize], elapsed: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<37} {:>10} {:>10} {:>6} {:>11} {:>13} {:>11} {:>7} {:>4}",
        "metric", "without", "with", "ratio", "added", "p10-p90 A|B", "pair ratios", "target", "met"
    );
    let mut missed = Vec::new();
    let mut iterations = 0;
    for ((spec, r), count) in SPECS.iter().zip(results).zip(counts) {
        iterations += count * ROUNDS * PLAN.len();
        let (a, b) = (sorted(&r.without), sorted(&r.with));
        let (ma, mb) = (percentile(&a, 0.5), percentile(&b, 0.5));
        let ratio = mb / ma;
        let width = |s: &[f64], m: f64| 100.0 * (percentile(s, 0.9) - percentile(s, 0.1)) / m;
        let range =
            |v: &mut dyn Iterator<Item = f64>| v.fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
        let (lo, hi) = range(&mut r.pair_ratios().into_iter());
        let (met, target) = match spec.target {
            AtMost(t) => (ratio <= t, format!("<={t:.2}")),
            Noise => {
                let (a_lo, a_hi) = range(&mut r.blocks.iter().filter(|(s, _)| *s == Without).map(|(_, m)| *m));
                let noise = ((a_hi - a_lo) / ma).max(NOISE_FLOOR);
                ((ratio - 1.0).abs() <= noise, format!("1±{noise:.2}"))
            }
        };
        if !met {
            missed.push(format!("{} ({ratio:.3} vs {target})", spec.short));
        }
        let _ = writeln!(
            out,
            "{:<37} {:>10} {:>10} {:>6.3} {:>11} {:>13} {:>11} {:>7} {:>4}",
            spec.name,
            ns(ma),
            ns(mb),
            ratio,
            format!("{}{}", if mb >= ma { "+" } else { "" }, ns(mb - ma)),
            format!("{:.1}%|{:.1}%", width(&a, ma), width(&b, mb)),
            format!("{lo:.3}-{hi:.3}"),
            target,
            if met { "yes" } else { "NO" },
        );
    }
    let met = SPECS.len() - missed.len();
    let _ = write!(
        out,
        "bench: {met} of {} targets met{}; {} blocks ({}), {iterations} timed iterations, {:.0} s",
        SPECS.len(),
        if missed.is_empty() { String::new() } else { format!(", missed: {}", missed.join(", ")) },
        PLAN.len(),
        PLAN.iter().map(|s| if *s == With { "B" } else { "A" }).collect::<String>(),
        elapsed.as_secs_f64()
    );
    out
}
