//! `pincg agent`: load the BPF side, then keep the mirror tree, the limits
//! in force and the metrics in line with the ledger.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pincg_bpf::ledger::{Ledger, Mode};
use pincg_bpf::loader::{self, HookState, HookStatus, LedgerCapacity};
use pincg_bpf::paths::PinPaths;
use pincg_bpf::preflight;
use pincg_cgroup_spec::config::NodeBudget;
use pincg_cgroup_spec::{Action, Limit};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn, Level};

use crate::cgroupfs::CgroupTree;
use crate::http::{self, Endpoint, Shared};
use crate::labels::qemu_guest_name;
use crate::limit_watch::LimitWatch;
use crate::limits::Limits;
use crate::logging;
use crate::mirror::Mirror;
use crate::preexisting::Preexisting;
use crate::snapshot::{CgroupRow, Snapshot};

/// How often the processes holding pins from before pincg are looked at.
const PREEXISTING_POLL: Duration = Duration::from_secs(5);

/// How often module hooks are checked against the loaded modules.
const MODULE_POLL: Duration = Duration::from_secs(1);

/// Where the agent reads and writes, and how it enforces.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the configuration came from, for the log.
    pub configuration: String,
    pub pins: PinPaths,
    pub mirror_root: PathBuf,
    pub listen: SocketAddr,
    pub interval: Duration,
    pub mode: Mode,
    /// All pins on the node together; enforced as the root cgroup's limit.
    pub node_budget: Option<NodeBudget>,
    pub metrics: crate::metrics::Filter,
    /// Capacity of a ledger created now (`--ledger-objects`, `--ledger-cgroups`).
    pub ledger: LedgerCapacity,
    /// The NRI plugin and its pod policy.
    pub nri: pincg_cgroup_spec::config::Nri,
}

/// Everything needed to take a snapshot.
pub struct Sampler {
    ledger: Ledger,
    /// The pin root (for the links' program statistics) and the cgroup root.
    pins: PinPaths,
    hooks: Vec<HookStatus>,
    /// VM names found in pod cgroups, with the local bytes they were found
    /// at: looked up again only when a pod cgroup's pins change.
    pod_vms: HashMap<u64, (u64, String)>,
    /// The module instances the hooks were last brought in line with.
    modules: Vec<(&'static str, Option<u64>)>,
    /// Why the last cleanup was skipped, so it is logged once.
    skipped_cleanup: Option<String>,
}

/// What the agent's upkeep works from: ledger entries of cgroups a
/// sample's scan did not find, and the usage map's reserve as read.
struct Removed {
    unused_usage: Vec<u64>,
    limits: Vec<u64>,
    /// The usage map's reserve slots that hold their placeholder.
    reserve: Vec<u64>,
    /// Why the scan was incomplete, if it was: then nothing here is removed.
    incomplete: Option<String>,
}

impl Sampler {
    pub fn new(ledger: Ledger, pins: PinPaths, hooks: Vec<HookStatus>) -> Sampler {
        Sampler { ledger, pins, hooks, pod_vms: HashMap::new(), modules: Vec::new(), skipped_cleanup: None }
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Read the ledger and the cgroup tree into one snapshot. A read: no
    /// map, file or counter changes (what `pincg status` and `top` run).
    pub fn sample(&mut self) -> anyhow::Result<Snapshot> {
        Ok(self.read()?.0)
    }

    /// The snapshot, and what of the ledger belongs to cgroups the scan
    /// did not find.
    ///
    /// The maps are read before the tree is scanned: an entry read then
    /// belongs to a cgroup that existed before the scan, so one a complete
    /// scan does not find was removed. (Scanned first, a cgroup created
    /// between the scan and the read, with a charge under way, would look
    /// removed.)
    fn read(&mut self) -> anyhow::Result<(Snapshot, Removed)> {
        let started = Instant::now();
        let (usage, reserve) = self.ledger.usage_and_reserve()?;
        let limits = self.ledger.limits()?;
        let cgroup_root = self.pins.cgroup_root();
        let tree = CgroupTree::scan(cgroup_root)
            .with_context(|| format!("reading the cgroup tree at {}", cgroup_root.display()))?;
        let unused = |u: &pincg_bpf::ledger::CgroupUsage| u.total.total() == 0 && u.local.total() == 0;
        let removed = Removed {
            unused_usage: usage.iter().filter(|u| unused(u) && !tree.contains(u.cgroup)).map(|u| u.cgroup).collect(),
            limits: limits.keys().filter(|id| !tree.contains(**id)).copied().collect(),
            incomplete: tree.complete().err().map(|(n, first)| format!("{n} unreadable, first {first}")),
            reserve,
        };
        let mut rows = Snapshot::build(&tree, &usage, &limits);
        self.name_vms_in_pods(&mut rows)?;
        let counters = self.ledger.counters()?;
        let (programs_skipped, probes_missed) = pincg_bpf::prog_stats::misses(&self.pins)?;
        let snapshot = Snapshot {
            rows,
            hooks: self.hooks.clone(),
            objects: counters.live_objects(),
            counters,
            programs_skipped,
            probes_missed,
            mode: Some(self.ledger.mode()?),
            actions: self.ledger.actions()?,
            limit_errors: 0,
            node_budget: None,
            sample_duration: started.elapsed(),
            capacity: self.ledger.capacity(),
            usage_reserve: removed.reserve.len() as u64,
            preexisting: HashMap::new(),
            preexisting_complete: None,
            scan_incomplete: removed.incomplete.clone(),
            nri: None,
        };
        Ok((snapshot, removed))
    }

    /// The agent's cleanup: drop the entries of removed cgroups, usage
    /// entries with nothing charged and limits (nothing can be charged to a
    /// removed cgroup any more). Never after an incomplete scan, where a
    /// cgroup below an unreadable directory would look removed; that is
    /// logged once per distinct gap.
    fn forget_removed(&mut self, removed: &Removed) -> anyhow::Result<()> {
        if let Some(why) = &removed.incomplete {
            if self.skipped_cleanup.as_ref() != Some(why) {
                warn!("cgroup tree scan incomplete ({why}): removed cgroups' entries are kept until a complete scan");
                self.skipped_cleanup = Some(why.clone());
            }
            return Ok(());
        }
        self.skipped_cleanup = None;
        for &cgroup in &removed.unused_usage {
            self.ledger.forget_cgroup(cgroup)?;
        }
        for &cgroup in &removed.limits {
            self.ledger.forget_limit(cgroup)?;
        }
        Ok(())
    }

    /// The agent's upkeep of the usage map's reserve (see
    /// `Ledger::keep_reserve`): the placeholders taken for limited cgroups
    /// are put back as room frees up; a shortfall is reported once per
    /// window.
    fn keep_reserve(&mut self, removed: &Removed) -> anyhow::Result<()> {
        if removed.reserve.len() as u64 >= self.ledger.reserve_size() {
            return Ok(());
        }
        let short = self.ledger.keep_reserve(&removed.reserve)?;
        if short > 0 {
            logging::report(
                Level::WARN,
                format!(
                    "usage map full: {short} of the {} entries it keeps for limited cgroups are theirs now",
                    self.ledger.reserve_size()
                ),
            );
        }
        Ok(())
    }

    /// A pod's cgroup path does not name the VM it runs (KubeVirt's
    /// virt-launcher): take the guest name from the cmdline of a QEMU
    /// process that pinned memory in it (world-readable: no ptrace access
    /// needed), where the agent sees the host's processes. The ledger's
    /// objects are read only when a pod cgroup's pins changed.
    fn name_vms_in_pods(&mut self, rows: &mut [CgroupRow]) -> anyhow::Result<()> {
        let pods = |r: &CgroupRow| !r.identity.pod_uid.is_empty() && r.identity.vm.is_empty() && r.local.total() > 0;
        let stale = rows
            .iter()
            .filter(|r| pods(r))
            .any(|r| self.pod_vms.get(&r.id).is_none_or(|(bytes, _)| *bytes != r.local.total()));
        if stale {
            // The ledger's tgids are the initial PID namespace's: in another
            // (a pod without hostPID) they would name unrelated processes.
            let visible = crate::preexisting::host_processes_visible();
            if let Err(why) = &visible {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| warn!("VMs in pod cgroups are not named (label vm=\"\"): {why}"));
            }
            let objects = if visible.is_ok() { self.ledger.objects()? } else { Vec::new() };
            self.pod_vms.clear();
            for row in rows.iter().filter(|r| pods(r)) {
                let vm = objects
                    .iter()
                    .filter(|o| o.cgroup == row.id)
                    .filter_map(|o| procfs::process::Process::new(o.tgid as i32).ok()?.cmdline().ok())
                    .find_map(|cmdline| qemu_guest_name(&cmdline))
                    .unwrap_or_default();
                self.pod_vms.insert(row.id, (row.local.total(), vm));
            }
        }
        for row in rows.iter_mut().filter(|r| pods(r)) {
            if let Some((_, vm)) = self.pod_vms.get(&row.id) {
                row.identity.vm = vm.clone();
            }
        }
        Ok(())
    }

    /// Attach hooks whose module appeared, drop those whose module went.
    /// Parsing BTF is expensive: done only when a module came or went.
    fn refresh_hooks(&mut self, pins: &PinPaths, capacity: LedgerCapacity) -> anyhow::Result<()> {
        let modules = loader::module_instances();
        if modules == self.modules {
            return Ok(());
        }
        self.modules = modules;
        if let Some(hooks) = loader::refresh(pins, &self.hooks, capacity)? {
            let hooks = preflight::Policy::read().restrict(hooks);
            let changed: Vec<HookStatus> = hooks
                .iter()
                .filter(|h| !self.hooks.iter().any(|old| old.hook == h.hook && old.state == h.state))
                .cloned()
                .collect();
            report_hooks(&changed);
            self.hooks = hooks;
        }
        Ok(())
    }
}

/// One round: limits from the mirror into BPF, then a snapshot into the
/// mirror, then the agent-side action (freeze).
struct Round {
    sampler: Sampler,
    mirror: Mirror,
    limits: Limits,
    frozen: HashSet<u64>,
    preexisting: Preexisting,
    preexisting_checked: Instant,
    /// The NRI plugin's state, when it runs.
    nri: Option<Arc<crate::nri::Status>>,
    /// Wakes the wait between rounds when a limit file is written; `None`
    /// where inotify could not be set up (limits then wait for the round).
    watch: Option<LimitWatch>,
}

impl Round {
    /// Run a round every `interval` and check module hooks every
    /// [`MODULE_POLL`], forever. One bad round (a cgroup vanishing mid-walk,
    /// a full disk) is logged and retried; it never stops the agent, but
    /// `/healthz` fails when rounds keep failing. A problem that recurs
    /// every round is logged once per [`logging::REPEAT_WINDOW`].
    fn repeat(mut self, interval: Duration, pins: &PinPaths, capacity: LedgerCapacity, shared: &Shared) {
        let mut modules_checked = Instant::now();
        loop {
            let started = Instant::now();
            if modules_checked.elapsed() >= MODULE_POLL {
                modules_checked = Instant::now();
                if let Err(e) = self.sampler.refresh_hooks(pins, capacity) {
                    logging::report(Level::WARN, format!("checking module hooks: {e:#}"));
                }
            }
            match self.run() {
                Ok(snapshot) => shared.publish(snapshot),
                Err(e) => {
                    let chain = format!("{e:#}");
                    logging::report(Level::ERROR, format!("round failed, metrics and mirror not updated: {chain}"));
                    shared.round_failed(chain);
                }
            }
            logging::flush_repeats();
            self.wait_for_round(started + interval);
        }
    }

    /// Until `next`, put in force the limit files written meanwhile, each
    /// as it is written (the round after reads them all again anyway).
    fn wait_for_round(&mut self, next: Instant) {
        while let Some(left) = next.checked_duration_since(Instant::now()) {
            let Some(watch) = &mut self.watch else { return std::thread::sleep(left) };
            let written = watch.wait(left);
            if written.is_empty() {
                continue;
            }
            for (cgroup, rel) in written {
                self.sync_limits(cgroup, &rel);
            }
        }
    }

    /// Put `cgroup`'s limit files in force. The NRI plugin never writes a
    /// pod's limit files while they are read; it waits for one cgroup's
    /// read at most, never a whole round's (its replies to the runtime
    /// have a deadline).
    fn sync_limits(&mut self, cgroup: u64, rel: &str) {
        let plugin_waits = self.nri.as_ref().map(|n| n.limits_lock.lock().expect("never poisoned"));
        self.limits.sync(self.sampler.ledger(), cgroup, self.mirror.root(), rel);
        drop(plugin_waits);
        if let Some(nri) = &self.nri {
            nri.let_plugin_in();
        }
    }

    fn run(&mut self) -> anyhow::Result<Snapshot> {
        let (mut snapshot, removed) = self.sampler.read()?;
        self.sampler.forget_removed(&removed)?;
        self.sampler.keep_reserve(&removed)?;
        let complete = removed.incomplete.is_none();
        let live: HashSet<u64> = snapshot.rows.iter().filter(|r| r.path.is_some()).map(|r| r.id).collect();
        for row in &snapshot.rows {
            if let Some(rel) = &row.path {
                self.sync_limits(row.id, rel);
            }
        }
        if complete {
            for gone in self.limits.cgroups().filter(|id| !live.contains(id)).collect::<Vec<_>>() {
                self.limits.forget(gone);
            }
        }
        // What `sync` put in force shows from the next snapshot on; the
        // limits a row carries are always those the kernel enforces.
        snapshot.limit_errors = self.limits.errors;
        snapshot.node_budget = self.limits.node_budget;
        if !self.preexisting.is_empty() && self.preexisting_checked.elapsed() >= PREEXISTING_POLL {
            self.preexisting.refresh();
            self.preexisting_checked = Instant::now();
        }
        snapshot.preexisting = self.preexisting.by_cgroup();
        if let Some(nri) = &self.nri {
            nri.label(&mut snapshot.rows);
            snapshot.nri = Some((nri.connected.load(Ordering::Relaxed), nri.refused.load(Ordering::Relaxed)));
        }
        snapshot.preexisting_complete = self.preexisting.complete();
        self.mirror.update(&snapshot.rows, complete, |row| self.limits.seed(row));
        snapshot.limit_errors += self.mirror.errors;
        if let Some(watch) = &mut self.watch {
            let rows = snapshot.rows.iter().filter_map(|r| Some((r.id, r.path.as_deref()?)));
            // A file written between its seeding above and its watch.
            for (cgroup, rel) in watch.keep(self.mirror.root(), rows) {
                self.sync_limits(cgroup, &rel);
            }
        }
        for row in &snapshot.rows {
            self.freeze_if_over(row);
        }
        Ok(snapshot)
    }

    /// The `freeze` action: a cgroup over its pins.max is frozen once.
    fn freeze_if_over(&mut self, row: &CgroupRow) {
        let (Some(limit), Some(rel)) = (&row.limit, &row.path) else { return };
        let over = matches!(limit.max, Limit::Bytes(max) if row.current() > max);
        if limit.action != Action::Freeze || !over || !self.frozen.insert(row.id) {
            return;
        }
        let file = self.sampler.pins.cgroup_root().join(rel).join("cgroup.freeze");
        match std::fs::write(&file, "1") {
            Ok(()) => warn!("{}: over pins.max, frozen ({})", row.label(), file.display()),
            Err(e) => tracing::error!("{}: over pins.max, freezing failed: {}: {e}", row.label(), file.display()),
        }
    }
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let started = Instant::now();
    preflight::check(opts.pins.root())?;
    info!("configuration: {}", opts.configuration);
    raise_open_files();
    // A ledger created now never saw the pins already held on the node.
    let fresh_ledger = !opts.pins.map("objects").exists();
    let policy = preflight::Policy::read();
    for (check, state) in policy.lines() {
        info!("kernel policy: {check} {state}");
    }
    let hooks = policy.restrict(loader::load_all(&opts.pins, opts.ledger)?);
    report_hooks(&hooks);
    if !hooks.iter().any(HookStatus::is_live) {
        let reason = hooks.iter().find_map(|h| match &h.state {
            HookState::Unavailable(r) => Some(r.clone()),
            _ => None,
        });
        bail!("no hook could be attached: {}", reason.unwrap_or_else(|| "no sources".into()));
    }
    let ledger = Ledger::open(&opts.pins)?;
    report_capacity(&ledger, opts.ledger);
    ledger.set_mode(opts.mode)?;
    info!("mode {}", opts.mode);
    let node_budget = match opts.node_budget {
        Some(budget) => {
            let bytes = budget.bytes(crate::config::mem_total()?);
            let how = match budget {
                NodeBudget::Bytes(_) => String::new(),
                NodeBudget::PercentOfMemory(_) => format!(" ({budget})"),
            };
            info!("node budget {bytes} bytes{how}, in force as the limit of the root cgroup");
            Some(bytes)
        }
        None => None,
    };
    // Start from the limits a previous agent left in force, so a limit
    // (or node budget) dropped while no agent ran is removed.
    let limits = Limits::resume(ledger.limits()?, node_budget);
    let cgroup_root = opts.pins.cgroup_root().to_path_buf();
    let mut round = Round {
        sampler: Sampler::new(ledger, opts.pins.clone(), hooks),
        mirror: Mirror::new(&opts.mirror_root, cgroup_root),
        limits,
        frozen: HashSet::new(),
        preexisting: if fresh_ledger { Preexisting::scan() } else { Preexisting::default() },
        preexisting_checked: Instant::now(),
        nri: None,
        watch: LimitWatch::new()
            .inspect_err(|e| warn!("inotify: {e}: limits written to the mirror are put in force at the next round"))
            .ok(),
    };
    for (cgroup, bytes) in round.preexisting.by_cgroup() {
        warn!("{cgroup}: {bytes} bytes were pinned or locked before pincg started; not in its ledger");
    }
    if opts.nri.enable {
        let plugin = crate::nri::Plugin::new(
            opts.nri.clone(),
            opts.pins.clone(),
            opts.mirror_root.clone(),
            Ledger::open(&opts.pins)?,
        );
        round.nri = Some(plugin.status.clone());
        tokio::spawn(crate::nri::run(plugin, opts.nri.socket.clone(), opts.nri.plugin_index));
    }
    let shared = Shared::new(round.run()?, opts.interval);

    let listener =
        TcpListener::bind(opts.listen).await.with_context(|| format!("listening for metrics on {}", opts.listen))?;
    let endpoint = Endpoint::new(shared.clone(), opts.metrics.clone(), http::ConnectionLimits::default());
    tokio::spawn(http::serve(listener, endpoint));
    info!(
        "ready in {} ms: mirror {}, metrics http://{}/metrics",
        started.elapsed().as_millis(),
        opts.mirror_root.display(),
        opts.listen
    );

    // Rounds run on their own thread, so a slow round on a large node never
    // delays a scrape: the endpoint serves the latest finished snapshot.
    // The thread never returns: `ended` resolves only if it panicked, and
    // the agent exits so that its supervisor restarts it.
    let rounds = shared.clone();
    let pins = opts.pins.clone();
    let (ended, thread_ended) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("pincg-rounds".into())
        .spawn(move || {
            let _ended = ended;
            round.repeat(opts.interval, &pins, opts.ledger, &rounds)
        })
        .context("starting the round thread")?;

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = thread_ended => bail!("the round thread panicked (its message is above); exiting so that the agent is restarted"),
    }
    info!("stopping; BPF programs, the ledger and the limits stay pinned under the pin root");
    Ok(())
}

/// The soft limit of open files raised to the hard one (systemd gives
/// services 1024 of 524288): the cgroup walk keeps a descriptor open per
/// level of nesting, and a delegatee decides how deep that is.
fn raise_open_files() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write the struct we own.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
        }
    };
    if !raised {
        warn!("RLIMIT_NOFILE: {}; the cgroup walk may run out of descriptors", std::io::Error::last_os_error());
    }
}

/// The ledger's capacity, and whether `--ledger-objects` and
/// `--ledger-cgroups` could apply: an existing pinned ledger keeps the size
/// it was created with.
fn report_capacity(ledger: &Ledger, asked: LedgerCapacity) {
    let has = |name: &str| ledger.capacity().into_iter().find(|(map, _)| *map == name).map_or(0, |(_, n)| n);
    let (objects, cgroups) = (has("objects"), has("usage"));
    for (flag, wanted, kept) in [("ledger-objects", asked.objects, objects), ("ledger-cgroups", asked.cgroups, cgroups)]
    {
        if let Some(n) = wanted.filter(|n| *n != kept) {
            warn!("--{flag} {n} applies to a new ledger (after `pincg unload`): the pinned ledger keeps its size");
        }
    }
    info!("ledger capacity {objects} pin objects, {cgroups} cgroups");
}

fn report_hooks(hooks: &[HookStatus]) {
    for h in hooks {
        info!("hook {} ({}): {}", h.hook, h.program.unwrap_or("-"), h.describe());
    }
}
