//! `pincg top`: the cgroups pinning the most, refreshed in place.

use std::time::Duration;

use pincg_cgroup_spec::format_human;

use crate::agent::Sampler;
use crate::columns::{self, events_text, human_limit, Column, Read, COLUMNS};
use crate::snapshot::{CgroupRow, Snapshot};

/// The `limit` busiest cgroups (by pins.current), leaves before parents
/// at equal usage.
pub fn busiest(snapshot: &Snapshot, limit: usize) -> Vec<&CgroupRow> {
    let mut rows: Vec<&CgroupRow> = snapshot.rows.iter().filter(|r| r.current() > 0).collect();
    rows.sort_by(|a, b| b.current().cmp(&a.current()).then(depth(b).cmp(&depth(a))).then(a.label().cmp(&b.label())));
    rows.truncate(limit);
    rows
}

fn depth(row: &CgroupRow) -> usize {
    row.path.as_deref().map_or(0, |p| p.matches('/').count() + usize::from(!p.is_empty()))
}

pub fn render(snapshot: &Snapshot, limit: usize) -> String {
    let mut out = format!(
        "pincg top: {} cgroups pinning, {} objects, mode {}\n\n",
        snapshot.rows.iter().filter(|r| r.current() > 0).count(),
        snapshot.objects,
        snapshot.mode.map_or("-".to_string(), |m| m.to_string()),
    );
    let columns: Vec<&Column> = COLUMNS.iter().filter(|c| c.in_tables).collect();
    for c in &columns {
        match c.read {
            Read::Bytes(_) | Read::Limit(_) => out.push_str(&format!("{:>10} ", c.header)),
            Read::PerSource(_) | Read::Events(_) => out.push_str(&format!(" {:<10}  ", c.header)),
        }
    }
    out.push_str("CGROUP\n");
    for r in busiest(snapshot, limit) {
        for c in &columns {
            match c.read {
                Read::Bytes(read) => out.push_str(&format!("{:>10} ", format_human(read(r)))),
                Read::Limit(read) => out.push_str(&format!("{:>10} ", human_limit(read(r)))),
                Read::PerSource(read) => {
                    let sources: Vec<&str> = read(r).iter().filter(|(_, b)| *b > 0).map(|(s, _)| s.key()).collect();
                    out.push_str(&format!(" {:<10}  ", sources.join(",")));
                }
                Read::Events(read) => {
                    out.push_str(&format!(" {:<10}  ", events_text(read(r))));
                }
            }
        }
        out.push_str(&r.label());
        out.push('\n');
    }
    out
}

/// Redraw every `interval`, `iterations` times (0: until interrupted).
pub fn run(sampler: &mut Sampler, interval: Duration, iterations: u64, limit: usize, json: bool) -> anyhow::Result<()> {
    let mut n = 0;
    loop {
        let snapshot = sampler.sample()?;
        if json {
            let rows: Vec<serde_json::Value> = busiest(&snapshot, limit).into_iter().map(columns::json).collect();
            println!("{}", serde_json::to_string(&rows)?);
        } else {
            // Clear the screen and home the cursor, as top(1) does.
            print!("\x1b[2J\x1b[H{}", render(&snapshot, limit));
        }
        n += 1;
        if iterations != 0 && n >= iterations {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use pincg_cgroup_spec::Source;

    use super::*;

    #[test]
    fn busiest_first_leaves_before_parents() {
        let snapshot = Snapshot {
            rows: vec![
                CgroupRow::sample("", Source::Vfio, 96),
                CgroupRow::sample("vm", Source::Vfio, 96),
                CgroupRow::sample("vm/a", Source::Vfio, 64),
                CgroupRow::sample("idle", Source::Vfio, 0),
            ],
            ..Snapshot::default()
        };
        let order: Vec<String> = busiest(&snapshot, 10).iter().map(|r| r.label()).collect();
        assert_eq!(order, ["/vm", "/", "/vm/a"]);
        assert_eq!(busiest(&snapshot, 1).len(), 1);
        assert!(render(&snapshot, 10).contains("vfio        /vm/a"));
    }
}
