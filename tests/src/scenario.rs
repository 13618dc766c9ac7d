//! In-guest toolkit for scenarios: cgroups, the agent, workloads, and
//! waiting for exact values. Every step prints one line, so a failing
//! scenario's output reads as a log of what happened.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
pub const MIRROR_ROOT: &str = "/run/pincg/cgroup";
pub const METRICS_ADDR: &str = "127.0.0.1:9578";

/// How long a value may take to show up in the mirror or the metrics.
pub const SETTLE: Duration = Duration::from_secs(10);

/// Print a scenario step.
pub fn step(what: &str) {
    println!("== {what}");
}

/// Run `program` with `args` (root tools such as `ip`, `vdpa`, `modprobe`)
/// and return its stdout; it must succeed.
pub fn tool(program: &str, args: &[&str]) -> Result<String> {
    let line = format!("{program} {}", args.join(" "));
    let out = Command::new(program).args(args).output().with_context(|| format!("running `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the running kernel is at least `major.minor`.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    version >= (major, minor)
}

/// Whether this kernel should refuse io_uring registrations before pinning
/// (7.0 and later: fmod_ret on io_uring_register) rather than act after
/// them; and the line `pincg probe` must then print for io_uring.
pub fn io_uring_refused() -> (bool, &'static str) {
    if kernel_at_least(7, 0) {
        (true, "io_uring   refuse")
    } else {
        (false, "io_uring   act after")
    }
}

/// The median of `values` (a NaN sorts as equal to anything).
pub fn median<T: PartialOrd + Copy>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values[values.len() / 2]
}

/// Say, visibly, that a step does not apply to this kernel.
pub fn skip(what: &str, why: &str) {
    println!("   SKIPPED {what}: {why}");
}

/// The binary `name` next to the running scenario binary.
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe().context("locating the scenario binary")?;
    let path = me.with_file_name(name);
    ensure!(path.exists(), "{} is not built (cargo build --workspace --bins)", path.display());
    Ok(path)
}

/// A cgroup v2 directory, relative to the root.
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub rel: String,
}

impl Cgroup {
    pub fn create(rel: &str) -> Result<Cgroup> {
        let path = Path::new(CGROUP_ROOT).join(rel);
        fs::create_dir_all(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Cgroup { rel: rel.to_string() })
    }

    pub fn path(&self) -> PathBuf {
        Path::new(CGROUP_ROOT).join(&self.rel)
    }

    pub fn add(&self, pid: u32) -> Result<()> {
        let procs = self.path().join("cgroup.procs");
        fs::write(&procs, pid.to_string()).with_context(|| format!("moving {pid} into {}", procs.display()))
    }

    /// The mirror file `name` of this cgroup.
    pub fn mirror(&self, name: &str) -> PathBuf {
        Path::new(MIRROR_ROOT).join(&self.rel).join(name)
    }

    /// Wait until mirror file `name` of this cgroup reads exactly `content`.
    pub fn expect_file(&self, name: &str, content: &str) -> Result<()> {
        let file = self.mirror(name);
        wait_for(&format!("{} = {content:?}", file.display()), || {
            let text = fs::read_to_string(&file).unwrap_or_else(|e| format!("<{e}>"));
            (text == content, format!("{text:?}"))
        })
    }

    /// Wait until this cgroup's `pins.current` reads exactly `bytes`.
    pub fn expect_current(&self, bytes: u64) -> Result<()> {
        self.expect_file("pins.current", &format!("{bytes}\n"))
    }

    /// Wait until `pins.stat` has `key bytes` for every pair given and 0
    /// for every other key (the sources, then `double_pinned`).
    pub fn expect_stat(&self, pairs: &[(&str, u64)]) -> Result<()> {
        let keys = pincg_cgroup_spec::Source::ALL.iter().map(|s| s.key());
        let expected: String = keys
            .chain([pincg_cgroup_spec::DOUBLE_PINNED])
            .map(|key| {
                let v = pairs.iter().find(|(k, _)| *k == key).map_or(0, |(_, v)| *v);
                format!("{key} {v}\n")
            })
            .collect();
        self.expect_file("pins.stat", &expected)
    }
}

/// Pages currently held by FOLL_PIN pins, system-wide, from `/proc/vmstat`
/// (`nr_foll_pin_acquired - nr_foll_pin_released`).
pub fn kernel_pinned_pages() -> Result<i64> {
    let vmstat = fs::read_to_string("/proc/vmstat")?;
    let field = |name: &str| -> Result<i64> {
        vmstat
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .with_context(|| format!("/proc/vmstat has no {name}"))
    };
    Ok(field("nr_foll_pin_acquired")? - field("nr_foll_pin_released")?)
}

/// At a quiescent point, the agent's node-wide total per source (the root
/// cgroup's `pins.stat` sources: every pin counted, as the kernel counts pin
/// references) equals what the kernel holds pinned: zero drift.
pub fn expect_no_drift() -> Result<()> {
    let root = Path::new(MIRROR_ROOT).join("pins.stat");
    wait_for("zero drift between the sources of /'s pins.stat and /proc/vmstat pinned pages", || {
        let agent = fs::read_to_string(&root).map_or(-1, |t| sources_sum(&t));
        match kernel_pinned_pages() {
            Ok(pages) => (agent == pages * 4096, format!("agent {agent} B, kernel {} B", pages * 4096)),
            Err(e) => (false, e.to_string()),
        }
    })
}

/// The sum of the source lines of a `pins.stat` text (`double_pinned` is not
/// a source).
fn sources_sum(stat: &str) -> i64 {
    let is_source = |key: &str| pincg_cgroup_spec::Source::ALL.iter().any(|s| s.key() == key);
    stat.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(key, _)| is_source(key))
        .filter_map(|(_, bytes)| bytes.parse::<i64>().ok())
        .sum()
}

/// Poll `check` (which returns whether it holds and what it saw) until it
/// holds or [`SETTLE`] passes.
pub fn wait_for(what: &str, check: impl FnMut() -> (bool, String)) -> Result<()> {
    wait_for_within(what, SETTLE, check)
}

/// The agent process.
pub struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    /// Start `pincg agent` and wait until its metrics endpoint answers.
    pub fn start() -> Result<Agent> {
        Agent::start_with(&[])
    }

    /// The same, with extra `pincg agent` flags.
    pub fn start_with(flags: &[&str]) -> Result<Agent> {
        Agent::start_as(&crate::shipped::View::Root, flags)
    }

    /// The agent of another build of pincg, the binary `binary` next to the
    /// scenario's (the upgrade scenario's), as root.
    pub fn start_build(binary: &str, flags: &[&str]) -> Result<Agent> {
        Agent::start_view(&crate::shipped::View::Root, binary, flags)
    }

    /// Start the agent as `view` ships it (full root, the systemd unit, the
    /// DaemonSet's pod), with extra flags.
    pub fn start_as(view: &crate::shipped::View, flags: &[&str]) -> Result<Agent> {
        Agent::start_view(view, "pincg", flags)
    }

    fn start_view(view: &crate::shipped::View, binary: &str, flags: &[&str]) -> Result<Agent> {
        let log = PathBuf::from("/tmp/pincg-agent.log");
        let file = fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let defaults = ["--listen", METRICS_ADDR, "--mirror-root", MIRROR_ROOT];
        let child = view
            .command(&sibling_binary(binary)?, &defaults, flags)?
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting pincg agent as {}", view.name()))?;
        let mut agent = Agent { child, log };
        let start = Instant::now();
        while http_get("/healthz").is_err() {
            if let Some(status) = agent.child.try_wait()? {
                bail!("pincg agent exited with {status}:\n{}", agent.log_text());
            }
            // Loading and verifying every program takes 5-9 s under
            // emulation on 6.12 and 17-38 s on 6.1 (measured in CI-like
            // runs), over a minute on a busy host.
            let budget = view.startup_budget().unwrap_or(12 * SETTLE);
            ensure!(start.elapsed() < budget, "pincg agent not ready after {budget:?}:\n{}", agent.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        println!("   agent ready in {} ms", start.elapsed().as_millis());
        Ok(agent)
    }

    /// SIGKILL: no cleanup of any kind runs.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the agent process is still alive.
    pub fn running(&self) -> bool {
        std::path::Path::new(&format!("/proc/{}", self.child.id())).exists()
            && !fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default().contains(") Z ")
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `pincg-workload` process, moved into its cgroup before any command.
pub struct Workload {
    pub name: String,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Workload {
    pub fn spawn(name: &str, cgroup: &Cgroup, args: &[&str]) -> Result<Workload> {
        let mut cmd = Command::new(sibling_binary("pincg-workload")?);
        cmd.args(args);
        Workload::spawn_command(name, cgroup, cmd)
    }

    /// A workload run as `uid` the way libvirt starts QEMU: RLIMIT_MEMLOCK
    /// raised (prlimit), then uid, gid and groups dropped (setpriv), no
    /// capabilities left.
    pub fn spawn_as(name: &str, cgroup: &Cgroup, uid: u32, args: &[&str]) -> Result<Workload> {
        Workload::spawn_program_as(name, cgroup, uid, &sibling_binary("pincg-workload")?, args)
    }

    /// The same with `program` (pincg-workload under another name, such as
    /// a `qemu-kvm` link).
    pub fn spawn_program_as(name: &str, cgroup: &Cgroup, uid: u32, program: &Path, args: &[&str]) -> Result<Workload> {
        let mut cmd = Command::new("prlimit");
        let id = uid.to_string();
        cmd.args(["--memlock=unlimited:unlimited", "--", "setpriv", "--reuid", &id, "--regid", &id, "--clear-groups"]);
        cmd.args(["--inh-caps=-all", "--"]).arg(program).args(args);
        Workload::spawn_command(name, cgroup, cmd)
    }

    fn spawn_command(name: &str, cgroup: &Cgroup, mut cmd: Command) -> Result<Workload> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting workload {name}"))?;
        cgroup.add(child.id())?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Workload { name: name.to_string(), child, stdin, stdout })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send one command; `Ok(Err(reply))` if the workload answered `err`.
    pub fn try_run(&mut self, command: &str) -> Result<std::result::Result<(), String>> {
        self.send(command)?;
        self.reply(command)
    }

    /// Send one command without waiting for its answer (`reply`), so
    /// several workloads can run theirs at once.
    pub fn send(&mut self, command: &str) -> Result<()> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        Ok(())
    }

    /// The answer to the command `send` sent; `Ok(Err(reply))` for `err`.
    pub fn reply(&mut self, command: &str) -> Result<std::result::Result<(), String>> {
        let mut reply = String::new();
        self.stdout.read_line(&mut reply)?;
        let reply = reply.trim();
        println!("   {}: {command}{}", self.name, if reply == "ok" { String::new() } else { format!(" -> {reply}") });
        Ok(if reply == "ok" { Ok(()) } else { Err(reply.to_string()) })
    }

    /// Send one command; it must answer `ok`.
    pub fn run(&mut self, command: &str) -> Result<()> {
        match self.try_run(command)? {
            Ok(()) => Ok(()),
            Err(reply) => bail!("workload {}: `{command}` answered {reply:?}", self.name),
        }
    }

    /// Send one command that must fail with an error containing `expected`.
    pub fn expect_err(&mut self, command: &str, expected: &str) -> Result<()> {
        match self.try_run(command)? {
            Err(reply) if reply.contains(expected) => Ok(()),
            other => bail!("workload {}: `{command}` should fail with {expected:?}, got {other:?}", self.name),
        }
    }

    /// The workload must die of SIGKILL (the kill action) without having
    /// answered `command`.
    pub fn expect_killed(mut self, command: &str) -> Result<()> {
        ensure!(
            self.run_unless_killed(command)?,
            "workload {}: `{command}` should get it killed, but it answered ok",
            self.name
        );
        Ok(())
    }

    /// Send one command: `Ok(false)` if it answered `ok`, `Ok(true)` if the
    /// workload died of SIGKILL (the kill action) instead of answering.
    pub fn run_unless_killed(&mut self, command: &str) -> Result<bool> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        let mut reply = String::new();
        self.stdout.read_line(&mut reply)?;
        if reply.trim() == "ok" {
            println!("   {}: {command}", self.name);
            return Ok(false);
        }
        // Any other answer means it is alive: waiting for it would hang.
        ensure!(reply.is_empty(), "workload {}: `{command}` answered {:?} instead of dying", self.name, reply.trim());
        let status = self.child.wait()?;
        ensure!(
            std::os::unix::process::ExitStatusExt::signal(&status) == Some(9),
            "workload {}: `{command}` answered {:?} and it ended with {status}",
            self.name,
            reply.trim()
        );
        println!("   {}: {command} -> killed by SIGKILL", self.name);
        Ok(true)
    }

    /// Tell the workload to exit without releasing anything; wait for it.
    pub fn exit(mut self) -> Result<()> {
        writeln!(self.stdin, "exit")?;
        let status = self.child.wait()?;
        ensure!(status.success(), "workload {} exited with {status}", self.name);
        println!("   {}: exited holding its pins", self.name);
        Ok(())
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Entries in every BPF hash map on the node (pincg's ledger, limits and
/// in-flight maps: the guest runs no other BPF), summed by map name, from
/// `bpftool map`. Array maps are left out: their size never changes.
pub fn map_entries() -> Result<std::collections::BTreeMap<String, usize>> {
    let bpftool = |args: &[&str]| -> Result<serde_json::Value> {
        let out = Command::new("bpftool").arg("-j").args(args).output().context("running bpftool")?;
        ensure!(out.status.success(), "bpftool {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).with_context(|| format!("bpftool {} printed no JSON", args.join(" ")))
    };
    let mut counts = std::collections::BTreeMap::new();
    for map in bpftool(&["map", "show"])?.as_array().context("bpftool map show: not a list")? {
        let kind = map["type"].as_str().unwrap_or_default();
        if !kind.contains("hash") {
            continue;
        }
        let id = map["id"].as_u64().context("bpftool map show: a map without id")?.to_string();
        let entries = bpftool(&["map", "dump", "id", &id])?.as_array().map_or(0, Vec::len);
        *counts.entry(map["name"].as_str().unwrap_or_default().to_string()).or_insert(0) += entries;
    }
    Ok(counts)
}

/// Resident memory of process `pid`, in bytes.
pub fn resident_bytes(pid: u32) -> Result<u64> {
    status_bytes(pid, "VmRSS")
}

/// Anonymous resident memory of process `pid` (`RssAnon`): what it
/// allocated, without the pages of its binary, which the page cache keeps
/// or drops as it likes (a debug build's RSS moved by 9 MiB either way
/// between two identical runs).
pub fn anonymous_bytes(pid: u32) -> Result<u64> {
    status_bytes(pid, "RssAnon")
}

fn status_bytes(pid: u32, field: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix(" kB")?.trim().parse().ok())
        .with_context(|| format!("/proc/{pid}/status has no {field}"))?;
    Ok(kib * 1024)
}

/// GET `path` from the agent's metrics endpoint.
pub fn http_get(path: &str) -> Result<String> {
    let mut stream = TcpStream::connect(METRICS_ADDR)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: pincg\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("malformed HTTP response")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    Ok(body.to_string())
}

/// Wait until the metrics say hook `hook` is attached (1) or not (0).
pub fn expect_hook(hook: &str, attached: u8) -> Result<()> {
    // A module's programs load when the module appears, which takes as
    // long as loading at start (seen: over 10 s on 6.1 on a loaded host,
    // 11 s for vfio in the DaemonSet's pod, throttled to half a CPU, on
    // an idle one): as long as the startup probe's 60 s.
    expect_hook_within(hook, attached, 6 * SETTLE)
}

/// The same, waiting up to `limit` (an agent throttled as its pod ships
/// takes longer to load a module's programs).
pub fn expect_hook_within(hook: &str, attached: u8, limit: Duration) -> Result<()> {
    let line_start = format!("pincg_hook_attached{{hook=\"{hook}\",");
    wait_for_within(&format!("hook {hook} attached = {attached}"), limit, || {
        let metrics = http_get("/metrics").unwrap_or_default();
        let line = metrics.lines().find(|l| l.starts_with(&line_start)).unwrap_or("<no such hook>");
        (line.ends_with(&format!(" {attached}")), line.to_string())
    })
}

/// The series of per-cgroup metric `name` for a cgroup outside Kubernetes
/// and libvirt (empty identity labels), with one more label, as the agent
/// writes it (labels sorted by name).
pub fn cgroup_series(name: &str, cgroup: &str, extra: (&str, &str)) -> String {
    let mut labels = [
        ("cgroup", cgroup),
        ("container_id", ""),
        ("namespace", ""),
        ("pod", ""),
        ("pod_uid", ""),
        ("qos", ""),
        ("vm", ""),
        extra,
    ];
    labels.sort();
    let text: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", text.join(","))
}

/// The count of `pincg_ledger_events_total{event="<event>"}` now.
pub fn ledger_event_count(event: &str) -> Result<u64> {
    let line = format!("pincg_ledger_events_total{{event=\"{event}\"}} ");
    let metrics = http_get("/metrics")?;
    let value = metrics.lines().find_map(|l| l.strip_prefix(&line)).with_context(|| format!("no metric {line}"))?;
    Ok(value.trim().parse()?)
}

/// Wait until the metrics have exactly the line `line`.
pub fn expect_metric(line: &str) -> Result<()> {
    wait_for(&format!("metric {line}"), || {
        let metrics = http_get("/metrics").unwrap_or_default();
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let seen: Vec<&str> = metrics.lines().filter(|l| l.starts_with(name)).collect();
        (metrics.lines().any(|l| l == line), format!("{seen:?}"))
    })
}

/// Threads that read the whole ledger (objects, usage, limits, counters:
/// what an agent round and `pincg status` read) in a loop until dropped, the
/// way busy scrapers and operators do: a reader must never make the kernel
/// skip a charge or a release (see bpf/src/reader.rs).
pub struct LedgerReaders {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Result<u64>>>,
}

impl LedgerReaders {
    pub fn start(threads: usize) -> Result<LedgerReaders> {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let paths = pincg_bpf::paths::PinPaths::new(pincg_bpf::paths::DEFAULT_PIN_ROOT, CGROUP_ROOT);
                    let ledger = pincg_bpf::ledger::Ledger::open(&paths)?;
                    let mut reads = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        ledger.objects()?;
                        ledger.usage()?;
                        ledger.limits()?;
                        ledger.counters()?;
                        reads += 1;
                    }
                    Ok(reads)
                })
            })
            .collect();
        Ok(LedgerReaders { stop, threads })
    }

    /// Stop the readers; how many whole reads they made.
    pub fn stop(mut self) -> Result<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut reads = 0;
        for thread in self.threads.drain(..) {
            reads += thread.join().map_err(|_| anyhow::anyhow!("a ledger reader panicked"))??;
        }
        println!("   ledger readers: {reads} whole reads of the ledger meanwhile");
        Ok(reads)
    }
}

/// Run `pincg <args>` and return its stdout; it must succeed.
pub fn pincg(args: &[&str]) -> Result<String> {
    let out = Command::new(sibling_binary("pincg")?).args(args).output()?;
    ensure!(out.status.success(), "pincg {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Poll `check` like [`wait_for`], but for up to `limit` (for slow starters
/// such as a Prometheus server under TCG). Polls every 20 ms.
pub fn wait_for_within(what: &str, limit: Duration, mut check: impl FnMut() -> (bool, String)) -> Result<()> {
    let start = Instant::now();
    loop {
        let (ok, seen) = check();
        if ok {
            println!("   ok {what} (after {} ms)", start.elapsed().as_millis());
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("expected {what}, but after {limit:?} it is {seen}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// GET `path` from the HTTP server at `addr`; returns the status code and
/// the body, whatever the status. Asks in HTTP/1.0, so that the answer is
/// never chunked.
pub fn http_get_from(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("malformed HTTP response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET {path}: no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// Percent-encode `s` for a URL query parameter (everything but RFC 3986's
/// unreserved characters).
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
