//! `pincg status`: the cgroup tree with pinned bytes, in human units.

use pincg_cgroup_spec::{format_human, Limit, Source};
use serde_json::json;

use crate::snapshot::{CgroupRow, Snapshot};

/// Rows worth showing: charged cgroups and their ancestors, or all.
pub fn visible(snapshot: &Snapshot, all: bool) -> Vec<&CgroupRow> {
    snapshot
        .rows
        .iter()
        .filter(|r| all || r.current() > 0 || r.path.as_deref() == Some(""))
        .collect()
}

/// The table for people: the tree indented by depth, one column per source.
pub fn render_table(rows: &[&CgroupRow]) -> String {
    let name = |r: &CgroupRow| match &r.path {
        Some(p) if p.is_empty() => "/".to_string(),
        Some(p) => {
            let depth = p.matches('/').count();
            format!("{}{}", "  ".repeat(depth + 1), p.rsplit('/').next().unwrap_or(p))
        }
        None => r.label(),
    };
    let width = rows.iter().map(|r| name(r).len()).max().unwrap_or(6).max(6);
    let mut out = format!("{:<width$}  {:>10}  {:>10}  {:>10}", "CGROUP", "CURRENT", "MAX", "PEAK");
    for s in Source::ALL {
        out.push_str(&format!("  {:>10}", s.key().to_uppercase()));
    }
    out.push('\n');
    for r in rows {
        let max = match r.limit.map(|l| l.max) {
            Some(Limit::Bytes(b)) => format_human(b),
            _ => "max".to_string(),
        };
        out.push_str(&format!("{:<width$}  {:>10}  {:>10}  {:>10}", name(r), format_human(r.current()), max, format_human(r.peak)));
        for (_, bytes) in r.total.iter() {
            out.push_str(&format!("  {:>10}", format_human(bytes)));
        }
        out.push('\n');
    }
    out
}

pub fn render_json(rows: &[&CgroupRow], snapshot: &Snapshot) -> serde_json::Value {
    let cgroups: Vec<_> = rows
        .iter()
        .map(|r| {
            let stat: serde_json::Map<_, _> =
                r.total.iter().map(|(s, b)| (s.key().to_string(), json!(b))).collect();
            let limit = r.limit.map(|l| json!({"max": l.max.to_string(), "high": l.high.to_string(), "action": l.action}));
            json!({"cgroup": r.label(), "id": r.id, "removed": r.path.is_none(),
                   "current": r.current(), "peak": r.peak, "limit": limit,
                   "events": r.events, "stat": stat})
        })
        .collect();
    json!({"cgroups": cgroups, "objects": snapshot.objects})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_indents_the_tree_and_uses_human_units() {
        let row = |path: &str, b: u64| CgroupRow::sample(path, Source::IoUring, b);
        let rows = [row("", 100663296), row("pincg", 100663296), row("pincg/a", 67108864)];
        let refs: Vec<&CgroupRow> = rows.iter().collect();
        let table = render_table(&refs);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("CGROUP"));
        assert!(lines[1].starts_with("/ "));
        assert!(lines[2].starts_with("  pincg "));
        assert!(lines[3].starts_with("    a "));
        assert!(lines[3].contains("64.0 MiB"));
        assert!(lines[1].contains("96.0 MiB"));
    }
}
