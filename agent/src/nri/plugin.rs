//! What pincg does with the runtime's calls: put each pod's budget in force
//! (BPF limits entry of the pod cgroup, and the mirror files, so the
//! agent's rounds keep it) before its first container is created, and take
//! it away with the pod.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pincg_bpf::ledger::{CgroupLimit, Ledger};
use pincg_bpf::paths::PinPaths;
use pincg_cgroup_spec::config::Nri;
use pincg_cgroup_spec::{Action, InterfaceFile, Limit};

use super::api::PodSandbox;
use super::cgroup::pod_cgroup;
use super::policy::{self, Budget, Decision, PodFacts};
use crate::mirror::{open_dir, replace_at, Owner};

/// Names of a pod cgroup as NRI reports them, for the series' labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNames {
    pub namespace: String,
    pub pod: String,
    pub vm: String,
}

/// What the plugin shares with the rounds (metrics, labels).
#[derive(Default)]
pub struct Status {
    pub connected: AtomicBool,
    pub refused: AtomicU64,
    /// By pod cgroup path (relative to the cgroup root).
    pub pods: Mutex<HashMap<String, PodNames>>,
    /// Held while the plugin writes a pod's mirror files and kernel entry,
    /// and by the rounds while they sync limits: a round reading the files
    /// half written (the new max with the old action, or the reverse)
    /// would put a weaker mix in force until the next round.
    pub limits_lock: Mutex<()>,
    /// Set while the plugin waits for `limits_lock`: the rounds, which take
    /// it once per cgroup, let it in (a mutex is not fair: the round thread
    /// would take it again before the woken plugin runs).
    pub plugin_waiting: AtomicBool,
}

impl Status {
    /// Take `limits_lock` as the plugin.
    fn lock_limits(&self) -> std::sync::MutexGuard<'_, ()> {
        self.plugin_waiting.store(true, Ordering::SeqCst);
        let guard = self.limits_lock.lock().expect("never poisoned");
        self.plugin_waiting.store(false, Ordering::SeqCst);
        guard
    }

    /// As a round, after a cgroup's sync: if the plugin waits, give it the
    /// lock (for at most 100 ms: it was woken by the unlock).
    pub fn let_plugin_in(&self) {
        let since = std::time::Instant::now();
        while self.plugin_waiting.load(Ordering::SeqCst) && since.elapsed() < std::time::Duration::from_millis(100) {
            std::thread::yield_now();
        }
    }
}

impl Status {
    /// Name the rows of the pods' cgroups (and of their containers').
    pub fn label(&self, rows: &mut [crate::snapshot::CgroupRow]) {
        let pods = self.pods.lock().expect("never poisoned");
        if pods.is_empty() {
            return;
        }
        for row in rows.iter_mut() {
            let Some(path) = &row.path else { continue };
            let pod = pods.iter().find(|(cgroup, _)| {
                path.strip_prefix(cgroup.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            });
            if let Some((_, names)) = pod {
                row.identity.namespace = names.namespace.clone();
                row.identity.pod = names.pod.clone();
                if row.identity.vm.is_empty() {
                    row.identity.vm = names.vm.clone();
                }
            }
        }
    }
}

/// At most `n` characters of `text`, with an ellipsis if cut.
fn prefix(text: &str, n: usize) -> String {
    match text.char_indices().nth(n) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// Why a pod's budget is not in force.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("pod {0}: the runtime reported no usable cgroup parent ({1:?})")]
    NoCgroup(String, String),
    #[error("pod {pod}: cgroup {} does not exist (yet)", path.display())]
    Missing { pod: String, path: PathBuf },
    #[error("pod {pod}: writing {}", path.display())]
    Mirror { pod: String, path: PathBuf, source: std::io::Error },
    #[error("pod {pod}: limit not put in force")]
    Ledger { pod: String, source: pincg_bpf::Error },
}

/// A pod the plugin knows, by sandbox id.
struct Pod {
    /// Below the cgroup root; `None` where the runtime gave no usable
    /// parent (then the pod has no budget: nothing to put in force).
    cgroup: Option<String>,
    label: String,
    budget: Option<Budget>,
}

pub struct Plugin {
    policy: Nri,
    pins: PinPaths,
    mirror_root: PathBuf,
    ledger: Ledger,
    pods: HashMap<String, Pod>,
    pub status: Arc<Status>,
}

impl Plugin {
    pub fn new(policy: Nri, pins: PinPaths, mirror_root: PathBuf, ledger: Ledger) -> Plugin {
        Plugin { policy, pins, mirror_root, ledger, pods: HashMap::new(), status: Arc::default() }
    }

    /// Decide the pod's budget (once per pod: refusals are counted once)
    /// and put it in force if its cgroup exists.
    pub fn apply(&mut self, pod: &PodSandbox) -> Result<Option<Budget>, ApplyError> {
        let label = format!("{}/{}", pod.namespace, pod.name);
        self.forget_removed();
        if !self.pods.contains_key(&pod.id) {
            let linux = pod.linux.as_ref();
            let parent = linux.map(|l| l.cgroup_parent.as_str()).unwrap_or_default();
            let cgroup = pod_cgroup(parent);
            let memory_limit = linux
                .and_then(|l| l.pod_resources.as_ref()?.memory.as_ref()?.limit.as_ref())
                .and_then(|l| u64::try_from(l.value).ok())
                .filter(|&l| l > 0);
            let facts = PodFacts {
                namespace: &pod.namespace,
                labels: Some(&pod.labels),
                annotations: Some(&pod.annotations),
                memory_limit,
            };
            let decision = policy::decide(&self.policy, &facts);
            // Without a budget a pod needs no cgroup: only a budget that
            // could not apply fails the pod's containers.
            if decision.budget.is_some() && cgroup.is_none() {
                return Err(ApplyError::NoCgroup(label, parent.into()));
            }
            self.report(&label, &decision);
            let names = PodNames {
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
                vm: policy::kubevirt_vm(&facts).unwrap_or_default(),
            };
            if let Some(cgroup) = &cgroup {
                self.status.pods.lock().expect("never poisoned").insert(cgroup.clone(), names);
            }
            self.pods.insert(pod.id.clone(), Pod { cgroup, label: label.clone(), budget: decision.budget });
        }
        let known = &self.pods[&pod.id];
        match (known.budget, &known.cgroup) {
            (Some(budget), Some(cgroup)) => self.put_in_force(&known.label, cgroup, &budget).map(|()| Some(budget)),
            _ => Ok(None),
        }
    }

    fn report(&self, label: &str, decision: &Decision) {
        for r in &decision.refused {
            self.status.refused.fetch_add(1, Ordering::Relaxed);
            // Annotation values are the tenant's (up to 256 KiB), and parse
            // errors quote them: log prefixes.
            tracing::warn!(
                "pod {label}: annotation {}={} refused: {}",
                r.key,
                prefix(&format!("{:?}", r.value), 80),
                prefix(&r.reason, 200)
            );
        }
        match decision.budget {
            Some(b) => tracing::info!(
                "pod {label}: budget max {}, high {}, action {} (from {:?})",
                b.max,
                b.high,
                b.action,
                decision.origin
            ),
            None => tracing::info!("pod {label}: no budget (no annotation, no node default)"),
        }
    }

    /// The mirror files first (a round reading them then keeps the same
    /// values), then the kernel's entry, so the limit is enforced when this
    /// returns.
    fn put_in_force(&self, label: &str, cgroup: &str, budget: &Budget) -> Result<(), ApplyError> {
        let _rounds_wait = self.status.lock_limits();
        let dir = self.pins.cgroup_root().join(cgroup);
        let ino =
            std::fs::metadata(&dir).map_err(|_| ApplyError::Missing { pod: label.into(), path: dir.clone() })?.ino();
        self.write_mirror(label, cgroup, budget)?;
        let limit = CgroupLimit { max: budget.max, high: budget.high, action: budget.action };
        self.ledger.set_limit(ino, &limit).map_err(|source| ApplyError::Ledger { pod: label.into(), source })
    }

    fn write_mirror(&self, label: &str, cgroup: &str, budget: &Budget) -> Result<(), ApplyError> {
        let files = [
            (InterfaceFile::Max, budget.max.to_string()),
            (InterfaceFile::High, budget.high.to_string()),
            (InterfaceFile::MaxAction, budget.action.to_string()),
        ];
        // Pod cgroups are the kubelet's (root's): the files are the writer's.
        let err = |path: PathBuf| move |source| ApplyError::Mirror { pod: label.into(), path, source };
        let dir = open_dir(&self.mirror_root, cgroup, true).map_err(err(self.mirror_root.join(cgroup)))?;
        for (file, value) in files {
            let path = self.mirror_root.join(cgroup).join(file.name());
            replace_at(&dir, file.name(), &format!("{value}\n"), Owner::Writer).map_err(err(path))?;
        }
        Ok(())
    }

    /// Forget pods whose cgroup is gone without a RemovePodSandbox:
    /// containerd 1.7 sends none for pods it recovered at a restart (its
    /// NRI state knows only containers then). Their kernel limits went with
    /// the cgroup (the rounds drop the limits of removed cgroups).
    fn forget_removed(&mut self) {
        let root = self.pins.cgroup_root();
        let gone: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, p)| p.cgroup.as_ref().is_some_and(|c| !root.join(c).exists()))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if let Some(Pod { cgroup: Some(cgroup), label, .. }) = self.pods.remove(&id) {
                self.status.pods.lock().expect("never poisoned").remove(&cgroup);
                tracing::warn!("pod {label}: its cgroup is gone; forgotten");
            }
        }
    }

    /// The pod is gone: its limit goes (the files say `max` so that no
    /// round puts it back); what it still has pinned stays charged.
    pub fn remove(&mut self, sandbox_id: &str) {
        let Some(pod) = self.pods.remove(sandbox_id) else {
            tracing::info!("NRI: pod sandbox {sandbox_id:?} removed; pincg had no budget for it");
            return;
        };
        let (Some(cgroup), Some(_)) = (&pod.cgroup, pod.budget) else { return };
        self.status.pods.lock().expect("never poisoned").remove(cgroup);
        let none = Budget { max: Limit::Max, high: Limit::Max, action: Action::Alert };
        let result = match self.put_in_force(&pod.label, cgroup, &none) {
            // A cgroup already removed has no limit left (the rounds drop it).
            Err(ApplyError::Missing { .. }) => Ok(()),
            other => other,
        };
        match result {
            Ok(()) => tracing::info!("pod {}: removed, its limit with it", pod.label),
            Err(e) => tracing::warn!("{}", crate::logging::chain(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_tenant_values_are_cut_in_the_log() {
        assert_eq!(super::prefix("8G", 80), "8G");
        assert_eq!(super::prefix(&"x".repeat(300), 3), "xxx…");
        assert_eq!(super::prefix("ééé", 2), "éé…");
    }
}
