//! One consistent view of the ledger joined with the cgroup tree: what the
//! mirror, the metrics and `pincg status` all render.

use pincg_bpf::ledger::{CgroupUsage, Counters};
use pincg_bpf::loader::HookStatus;
use pincg_cgroup_spec::PerSource;
use serde::Serialize;

use crate::cgroupfs::CgroupTree;

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
}

impl CgroupRow {
    /// `pins.current`.
    pub fn current(&self) -> u64 {
        self.total.total()
    }

    /// The path for people: `/a/b`, or `(removed cgroup 1234)`.
    pub fn label(&self) -> String {
        match &self.path {
            Some(p) => crate::cgroupfs::display_path(p),
            None => format!("(removed cgroup {})", self.id),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every existing cgroup and every removed one still charged, by path.
    pub rows: Vec<CgroupRow>,
    pub hooks: Vec<HookStatus>,
    pub counters: Counters,
    pub objects: usize,
}

impl Snapshot {
    /// Join ledger usage with the tree. Existing cgroups without usage get
    /// zero rows; removed cgroups appear only while still charged.
    pub fn build(tree: &CgroupTree, usage: &[CgroupUsage]) -> Vec<CgroupRow> {
        let mut rows: Vec<CgroupRow> = tree
            .iter()
            .map(|(id, path)| CgroupRow {
                id,
                path: Some(path.to_string()),
                total: PerSource::default(),
                local: PerSource::default(),
            })
            .collect();
        let index: std::collections::HashMap<u64, usize> =
            rows.iter().enumerate().map(|(i, r)| (r.id, i)).collect();
        for u in usage {
            match index.get(&u.cgroup) {
                Some(&i) => {
                    rows[i].total = u.total;
                    rows[i].local = u.local;
                }
                None if u.total.total() > 0 => rows.push(CgroupRow {
                    id: u.cgroup,
                    path: None,
                    total: u.total,
                    local: u.local,
                }),
                None => {}
            }
        }
        rows.sort_by(|a, b| (a.path.is_none(), &a.path, a.id).cmp(&(b.path.is_none(), &b.path, b.id)));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_cgroups_stay_while_charged() {
        let tree = CgroupTree::default();
        let usage = [
            CgroupUsage { cgroup: 7, local: PerSource([0, 0, 0, 4096, 0, 0]), total: PerSource([0, 0, 0, 4096, 0, 0]) },
            CgroupUsage { cgroup: 8, local: PerSource::default(), total: PerSource::default() },
        ];
        let rows = Snapshot::build(&tree, &usage);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].label(), "(removed cgroup 7)");
        assert_eq!(rows[0].current(), 4096);
    }
}
