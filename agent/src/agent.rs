//! `pincg agent`: load the BPF side, then keep the mirror tree, the limits
//! in force and the metrics in line with the ledger.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pincg_bpf::ledger::{Ledger, Mode};
use pincg_bpf::loader::{self, HookState, HookStatus, LedgerObjects};
use pincg_bpf::paths::PinPaths;
use pincg_bpf::preflight;
use pincg_cgroup_spec::config::NodeBudget;
use pincg_cgroup_spec::{Action, Limit};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::cgroupfs::CgroupTree;
use crate::http::{self, Shared};
use crate::labels::qemu_guest_name;
use crate::limits::Limits;
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
    /// Capacity of a ledger created now (`--ledger-objects`).
    pub ledger_objects: LedgerObjects,
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
}

impl Sampler {
    pub fn new(ledger: Ledger, pins: PinPaths, hooks: Vec<HookStatus>) -> Sampler {
        Sampler { ledger, pins, hooks, pod_vms: HashMap::new(), modules: Vec::new() }
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Read the ledger and the cgroup tree into one snapshot, and drop the
    /// entries of removed cgroups: usage entries with nothing charged, and
    /// limits (nothing can be charged to a removed cgroup any more).
    ///
    /// The maps are read before the tree is scanned: an entry read then
    /// belongs to a cgroup that existed before the scan, so one the scan
    /// does not find was removed. (Scanned first, a cgroup created between
    /// the scan and the read, with a charge under way, would look removed.)
    pub fn sample(&mut self) -> anyhow::Result<Snapshot> {
        let started = Instant::now();
        let usage = self.ledger.usage()?;
        let mut limits = self.ledger.limits()?;
        let cgroup_root = self.pins.cgroup_root();
        let tree = CgroupTree::scan(cgroup_root)
            .with_context(|| format!("reading the cgroup tree at {}", cgroup_root.display()))?;
        let unused = |u: &pincg_bpf::ledger::CgroupUsage| u.total.total() == 0 && u.local.total() == 0;
        for u in usage.iter().filter(|u| unused(u) && !tree.contains(u.cgroup)) {
            self.ledger.forget_cgroup(u.cgroup)?;
        }
        for gone in limits.keys().filter(|id| !tree.contains(**id)).copied().collect::<Vec<_>>() {
            self.ledger.forget_limit(gone)?;
            limits.remove(&gone);
        }
        let mut rows = Snapshot::build(&tree, &usage, &limits);
        self.name_vms_in_pods(&mut rows)?;
        let counters = self.ledger.counters()?;
        Ok(Snapshot {
            rows,
            hooks: self.hooks.clone(),
            objects: counters.live_objects(),
            counters,
            programs_skipped: pincg_bpf::prog_stats::recursion_misses(&self.pins)?,
            mode: Some(self.ledger.mode()?),
            actions: self.ledger.actions()?,
            limit_errors: 0,
            node_budget: None,
            sample_duration: started.elapsed(),
            capacity: self.ledger.capacity(),
            preexisting: HashMap::new(),
        })
    }

    /// A pod's cgroup path does not name the VM it runs (KubeVirt's
    /// virt-launcher): take the guest name from the cmdline of a QEMU
    /// process that pinned memory in it. The ledger's objects are read only
    /// when a pod cgroup's pins changed.
    fn name_vms_in_pods(&mut self, rows: &mut [CgroupRow]) -> anyhow::Result<()> {
        let pods = |r: &CgroupRow| !r.identity.pod_uid.is_empty() && r.identity.vm.is_empty() && r.local.total() > 0;
        let stale = rows
            .iter()
            .filter(|r| pods(r))
            .any(|r| self.pod_vms.get(&r.id).is_none_or(|(bytes, _)| *bytes != r.local.total()));
        if stale {
            let objects = self.ledger.objects()?;
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
    fn refresh_hooks(&mut self, pins: &PinPaths, objects: LedgerObjects) -> anyhow::Result<()> {
        let modules = loader::module_instances();
        if modules == self.modules {
            return Ok(());
        }
        self.modules = modules;
        if let Some(hooks) = loader::refresh(pins, &self.hooks, objects)? {
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
}

impl Round {
    /// Run a round every `interval` and check module hooks every
    /// [`MODULE_POLL`], forever. One bad round (a cgroup vanishing mid-walk,
    /// a full disk) is logged and retried; it never stops the agent.
    fn repeat(mut self, interval: Duration, pins: &PinPaths, objects: LedgerObjects, shared: &Shared) {
        let mut modules_checked = Instant::now();
        loop {
            let started = Instant::now();
            if modules_checked.elapsed() >= MODULE_POLL {
                modules_checked = Instant::now();
                if let Err(e) = self.sampler.refresh_hooks(pins, objects) {
                    log(&format!("{e:#}"));
                }
            }
            match self.run() {
                Ok(snapshot) => *shared.write().expect("snapshot lock is never poisoned") = Arc::new(snapshot),
                Err(e) => log(&format!("{e:#}")),
            }
            std::thread::sleep(interval.saturating_sub(started.elapsed()));
        }
    }

    fn run(&mut self) -> anyhow::Result<Snapshot> {
        let mut snapshot = self.sampler.sample()?;
        let live: HashSet<u64> = snapshot.rows.iter().filter(|r| r.path.is_some()).map(|r| r.id).collect();
        for row in &snapshot.rows {
            if let Some(rel) = &row.path {
                self.limits.sync(self.sampler.ledger(), row.id, &self.mirror.dir(rel), rel.is_empty());
            }
        }
        for gone in self.limits.cgroups().filter(|id| !live.contains(id)).collect::<Vec<_>>() {
            self.limits.forget(gone);
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
        self.mirror.update(&snapshot.rows)?;
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
            Ok(()) => log(&format!("{}: over pins.max, frozen ({})", row.label(), file.display())),
            Err(e) => log(&format!("{}: over pins.max, freezing failed: {}: {e}", row.label(), file.display())),
        }
    }
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let started = Instant::now();
    preflight::check(opts.pins.root())?;
    log(&format!("configuration: {}", opts.configuration));
    // A ledger created now never saw the pins already held on the node.
    let fresh_ledger = !opts.pins.map("objects").exists();
    let hooks = loader::load_all(&opts.pins, opts.ledger_objects)?;
    report_hooks(&hooks);
    if !hooks.iter().any(HookStatus::is_live) {
        let reason = hooks.iter().find_map(|h| match &h.state {
            HookState::Unavailable(r) => Some(r.clone()),
            _ => None,
        });
        bail!("no hook could be attached: {}", reason.unwrap_or_else(|| "no sources".into()));
    }
    let ledger = Ledger::open(&opts.pins)?;
    report_capacity(&ledger, opts.ledger_objects);
    ledger.set_mode(opts.mode)?;
    log(&format!("mode {}", opts.mode));
    let node_budget = match opts.node_budget {
        Some(budget) => {
            let bytes = budget.bytes(crate::config::mem_total()?);
            let how = match budget {
                NodeBudget::Bytes(_) => String::new(),
                NodeBudget::PercentOfMemory(_) => format!(" ({budget})"),
            };
            log(&format!("node budget {bytes} bytes{how}, in force as the limit of the root cgroup"));
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
    };
    for (cgroup, bytes) in round.preexisting.by_cgroup() {
        log(&format!("{cgroup}: {bytes} bytes were pinned or locked before pincg started; not in its ledger"));
    }
    let shared: Shared = Arc::new(RwLock::new(Arc::new(round.run()?)));

    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening for metrics on {}", opts.listen))?;
    tokio::spawn(http::serve(listener, shared.clone(), Arc::new(opts.metrics.clone())));
    log(&format!(
        "ready in {} ms: mirror {}, metrics http://{}/metrics",
        started.elapsed().as_millis(),
        opts.mirror_root.display(),
        opts.listen
    ));

    // Rounds run on their own thread, so a slow round on a large node never
    // delays a scrape: the endpoint serves the latest finished snapshot.
    let rounds = shared.clone();
    let pins = opts.pins.clone();
    std::thread::Builder::new()
        .name("pincg-rounds".into())
        .spawn(move || round.repeat(opts.interval, &pins, opts.ledger_objects, &rounds))
        .context("starting the round thread")?;

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    log("stopping; BPF programs, the ledger and the limits stay pinned under the pin root");
    Ok(())
}

/// The ledger's capacity, and whether `--ledger-objects` could apply: an
/// existing pinned ledger keeps the size it was created with.
fn report_capacity(ledger: &Ledger, asked: LedgerObjects) {
    let objects = ledger.capacity().into_iter().find(|(map, _)| *map == "objects").map_or(0, |(_, n)| n);
    match asked {
        Some(n) if n != objects => log(&format!(
            "ledger capacity {objects} pin objects: the pinned ledger keeps its size; \
             --ledger-objects {n} applies to a new ledger (after `pincg unload`)"
        )),
        _ => log(&format!("ledger capacity {objects} pin objects")),
    }
}

fn report_hooks(hooks: &[HookStatus]) {
    for h in hooks {
        log(&format!("hook {} ({}): {}", h.hook, h.program.unwrap_or("-"), h.describe()));
    }
}

pub fn log(line: &str) {
    eprintln!("pincg agent: {line}");
}
