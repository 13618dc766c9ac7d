//! One consistent view of the ledger joined with the cgroup tree: what the
//! mirror, the metrics and `pincg status` all render.

use std::collections::HashMap;

use pincg_bpf::ledger::{CgroupLimit, CgroupUsage, Counters, Mode, SourceActions};
use pincg_bpf::loader::HookStatus;
use pincg_cgroup_spec::{Events, PerSource, Source};
use serde::Serialize;

use crate::cgroupfs::CgroupTree;
use crate::labels::{identify, Identity};

/// Usage of one cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CgroupRow {
    pub id: u64,
    /// Relative to the cgroup root ("" for the root); `None` once removed.
    pub path: Option<String>,
    /// This cgroup and its descendants, per source (`pins.stat`).
    pub total: PerSource,
    /// This cgroup alone.
    pub local: PerSource,
    /// Unique bytes of this cgroup and its descendants (`pins.current`).
    pub pinned: u64,
    /// `pins.peak`.
    pub peak: u64,
    /// `pins.events`: this cgroup's limit events and its descendants'.
    pub events: Events,
    /// `pins.events.local`.
    pub events_local: Events,
    /// The limit in force in BPF, if any.
    #[serde(skip)]
    pub limit: Option<CgroupLimit>,
    /// Pod, container and VM, for joins.
    #[serde(skip)]
    pub identity: Identity,
}

impl CgroupRow {
    /// `pins.current`.
    pub fn current(&self) -> u64 {
        self.pinned
    }

    /// Bytes pinned again by another source or object of the same process:
    /// the sum over sources beyond `pins.current` (`pins.stat`'s
    /// `double_pinned`).
    pub fn double_pinned(&self) -> u64 {
        self.total.total().saturating_sub(self.pinned)
    }

    /// The path for people: `/a/b`, or `(removed cgroup 1234)`.
    pub fn label(&self) -> String {
        match &self.path {
            Some(p) => crate::cgroupfs::display_path(p),
            None => format!("(removed cgroup {})", self.id),
        }
    }
}

#[cfg(test)]
impl CgroupRow {
    /// An existing cgroup at `path` with `bytes` pinned through `source`.
    pub fn sample(path: &str, source: Source, bytes: u64) -> CgroupRow {
        let mut total = PerSource::default();
        total.0[source as usize] = bytes;
        CgroupRow {
            id: 1,
            path: Some(path.into()),
            total,
            local: total,
            pinned: bytes,
            peak: bytes,
            events: Events::default(),
            events_local: Events::default(),
            limit: None,
            identity: identify(path),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every existing cgroup and every removed one still charged, by path.
    pub rows: Vec<CgroupRow>,
    pub hooks: Vec<HookStatus>,
    pub counters: Counters,
    /// Times the kernel skipped one of pincg's programs (see
    /// `pincg_bpf::prog_stats`): charges or releases the ledger missed.
    pub programs_skipped: u64,
    /// Hits pincg's kprobes and kretprobes dropped (kretprobe `maxactive`
    /// exhausted; kernel 6.7+ reports it): charges or releases missed too.
    pub probes_missed: u64,
    /// Live pin objects in the ledger.
    pub objects: u64,
    pub mode: Option<Mode>,
    pub actions: Vec<(Source, SourceActions)>,
    /// Limit files refused since the agent started.
    pub limit_errors: u64,
    /// The node budget in bytes, if the agent's configuration sets one.
    pub node_budget: Option<u64>,
    /// How long reading the ledger and the cgroup tree took.
    pub sample_duration: std::time::Duration,
    /// Entries each ledger map can hold.
    pub capacity: Vec<(&'static str, u32)>,
    /// Entries of the usage map kept for limited cgroups, not yet theirs.
    pub usage_reserve: u64,
    /// Bytes pinned or locked before the ledger existed, by cgroup path.
    pub preexisting: HashMap<String, u64>,
    /// Whether the agent's scan for them read every process (`None`: no
    /// scan, the ledger already existed when the agent started).
    pub preexisting_complete: Option<bool>,
    /// Why the cgroup tree scan missed directories, if it did: cgroups
    /// below them show as removed.
    pub scan_incomplete: Option<String>,
    /// The NRI plugin, when enabled: connected, and annotations refused.
    pub nri: Option<(bool, u64)>,
}

impl Snapshot {
    /// Join ledger usage and limits with the tree. Existing cgroups without
    /// usage get zero rows; removed cgroups appear only while still charged.
    pub fn build(tree: &CgroupTree, usage: &[CgroupUsage], limits: &HashMap<u64, CgroupLimit>) -> Vec<CgroupRow> {
        let row = |id: u64, path: Option<String>| CgroupRow {
            id,
            identity: path.as_deref().map(identify).unwrap_or_default(),
            path,
            total: PerSource::default(),
            local: PerSource::default(),
            pinned: 0,
            peak: 0,
            events: Events::default(),
            events_local: Events::default(),
            limit: limits.get(&id).copied(),
        };
        let mut rows: Vec<CgroupRow> = tree.iter().map(|(id, path)| row(id, Some(path.to_string()))).collect();
        let mut index: HashMap<u64, usize> = rows.iter().enumerate().map(|(i, r)| (r.id, i)).collect();
        for u in usage {
            let i = match index.get(&u.cgroup) {
                Some(&i) => i,
                None if u.total.total() > 0 => {
                    rows.push(row(u.cgroup, None));
                    index.insert(u.cgroup, rows.len() - 1);
                    rows.len() - 1
                }
                None => continue,
            };
            let r = &mut rows[i];
            (r.total, r.local, r.pinned, r.peak, r.events_local) = (u.total, u.local, u.pinned, u.peak, u.events);
        }
        propagate_events(&mut rows);
        rows.sort_by(|a, b| (a.path.is_none(), &a.path, a.id).cmp(&(b.path.is_none(), &b.path, b.id)));
        rows
    }
}

/// `pins.events` of a cgroup counts the events of its whole subtree.
fn propagate_events(rows: &mut [CgroupRow]) {
    let by_path: HashMap<String, usize> =
        rows.iter().enumerate().filter_map(|(i, r)| r.path.clone().map(|p| (p, i))).collect();
    let local: Vec<(Option<String>, Events)> = rows.iter().map(|r| (r.path.clone(), r.events_local)).collect();
    for (path, events) in local {
        let Some(mut path) = path else { continue };
        loop {
            if let Some(&i) = by_path.get(&path) {
                rows[i].events.add(&events);
            }
            if path.is_empty() {
                break;
            }
            path = path.rsplit_once('/').map_or(String::new(), |(parent, _)| parent.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_cgroups_stay_while_charged() {
        let tree = CgroupTree::default();
        let charged = PerSource([0, 0, 0, 4096, 0, 0]);
        let usage = [
            CgroupUsage {
                cgroup: 7,
                local: charged,
                total: charged,
                pinned: 4096,
                peak: 4096,
                events: Events::default(),
            },
            CgroupUsage { cgroup: 8, ..CgroupUsage::default() },
        ];
        let rows = Snapshot::build(&tree, &usage, &HashMap::new());
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].label(), "(removed cgroup 7)");
        assert_eq!(rows[0].current(), 4096);
    }

    #[test]
    fn events_add_up_the_subtree() {
        let row = |path: &str, max: u64| CgroupRow {
            events_local: Events { high: 0, max },
            ..CgroupRow::sample(path, Source::Vfio, 0)
        };
        let mut rows = vec![row("", 0), row("vm", 1), row("vm/a", 2), row("other", 4)];
        propagate_events(&mut rows);
        let max: Vec<u64> = rows.iter().map(|r| r.events.max).collect();
        assert_eq!(max, [7, 3, 2, 4]);
    }
}
