//! `pincg agent`: load the BPF side, then keep the mirror tree and the
//! metrics in line with the ledger.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pincg_bpf::ledger::Ledger;
use pincg_bpf::loader::{self, HookState, HookStatus};
use pincg_bpf::paths::PinPaths;
use pincg_bpf::preflight;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::cgroupfs::CgroupTree;
use crate::http::{self, Shared};
use crate::mirror::Mirror;
use crate::snapshot::Snapshot;

/// How often module hooks are checked against the loaded modules.
const MODULE_POLL: Duration = Duration::from_secs(1);

/// Where the agent reads and writes.
#[derive(Debug, Clone)]
pub struct Options {
    pub pins: PinPaths,
    pub cgroup_root: PathBuf,
    pub mirror_root: PathBuf,
    pub listen: SocketAddr,
    pub interval: Duration,
}

/// Everything the agent needs to take a snapshot.
pub struct Sampler {
    ledger: Ledger,
    cgroup_root: PathBuf,
    hooks: Vec<HookStatus>,
}

impl Sampler {
    pub fn new(ledger: Ledger, cgroup_root: PathBuf, hooks: Vec<HookStatus>) -> Sampler {
        Sampler { ledger, cgroup_root, hooks }
    }

    /// Attach hooks whose module appeared, drop those whose module went.
    fn refresh_hooks(&mut self, pins: &PinPaths) -> anyhow::Result<()> {
        if let Some(hooks) = loader::refresh(pins, &self.hooks)? {
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

    /// Read the ledger and the cgroup tree into one snapshot, and drop the
    /// usage entries of removed cgroups that have nothing charged.
    pub fn sample(&self) -> anyhow::Result<Snapshot> {
        let tree = CgroupTree::scan(&self.cgroup_root)
            .with_context(|| format!("reading the cgroup tree at {}", self.cgroup_root.display()))?;
        let usage = self.ledger.usage()?;
        for u in &usage {
            if u.total.total() == 0 && u.local.total() == 0 && !tree.contains(u.cgroup) {
                self.ledger.forget_cgroup(u.cgroup)?;
            }
        }
        Ok(Snapshot {
            rows: Snapshot::build(&tree, &usage),
            hooks: self.hooks.clone(),
            counters: self.ledger.counters()?,
            objects: self.ledger.objects()?.len(),
        })
    }
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let started = Instant::now();
    preflight::check(opts.pins.root())?;
    let hooks = loader::load_all(&opts.pins)?;
    report_hooks(&hooks);
    if !hooks.iter().any(HookStatus::is_live) {
        let reason = hooks.iter().find_map(|h| match &h.state {
            HookState::Unavailable(r) => Some(r.clone()),
            _ => None,
        });
        bail!("no hook could be attached: {}", reason.unwrap_or_else(|| "no sources".into()));
    }
    let mut sampler = Sampler::new(Ledger::open(&opts.pins)?, opts.cgroup_root.clone(), hooks);
    let mut mirror = Mirror::new(&opts.mirror_root);
    let first = sampler.sample()?;
    mirror.update(&first.rows)?;
    let shared: Shared = Arc::new(RwLock::new(Arc::new(first)));

    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening for metrics on {}", opts.listen))?;
    tokio::spawn(http::serve(listener, shared.clone()));
    log(&format!(
        "ready in {} ms: mirror {}, metrics http://{}/metrics",
        started.elapsed().as_millis(),
        opts.mirror_root.display(),
        opts.listen
    ));

    let mut tick = tokio::time::interval(opts.interval);
    let mut modules = tokio::time::interval(MODULE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = modules.tick() => {
                if let Err(e) = sampler.refresh_hooks(&opts.pins) {
                    log(&format!("{e:#}"));
                }
                continue;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        // One bad round (a cgroup vanishing mid-walk, a full disk) is logged
        // and retried next tick; it never stops the agent.
        match sampler.sample() {
            Ok(snapshot) => {
                if let Err(e) = mirror.update(&snapshot.rows) {
                    log(&format!("{e}"));
                }
                *shared.write().expect("snapshot lock is never poisoned") = Arc::new(snapshot);
            }
            Err(e) => log(&format!("{e:#}")),
        }
    }
    log("stopping; BPF programs and the ledger stay pinned under the pin root");
    Ok(())
}

fn report_hooks(hooks: &[HookStatus]) {
    for h in hooks {
        log(&format!("hook {} ({}): {}", h.hook, h.program.unwrap_or("-"), h.describe()));
    }
}

pub fn log(line: &str) {
    eprintln!("pincg agent: {line}");
}
