//! `pincg status`: the cgroup tree with pinned bytes, in human units.

use pincg_cgroup_spec::{format_human, Source};
use serde_json::json;

use crate::columns::{self, events_text, human_limit, Column, Read, COLUMNS};
use crate::snapshot::{CgroupRow, Snapshot};

/// Rows worth showing: charged cgroups and their ancestors, or all.
pub fn visible(snapshot: &Snapshot, all: bool) -> Vec<&CgroupRow> {
    snapshot.rows.iter().filter(|r| all || r.current() > 0 || r.path.as_deref() == Some("")).collect()
}

/// The table for people: the tree indented by depth, then every column
/// `status` shows (`crate::columns`), bytes per source one column each.
pub fn render_table(rows: &[&CgroupRow]) -> String {
    let name = |r: &CgroupRow| match &r.path {
        Some(p) if p.is_empty() => "/".to_string(),
        Some(p) => {
            let depth = p.matches('/').count();
            format!("{}{}", "  ".repeat(depth + 1), p.rsplit('/').next().unwrap_or(p))
        }
        None => r.label(),
    };
    let columns: Vec<&Column> = COLUMNS.iter().filter(|c| c.in_tables).collect();
    let width = rows.iter().map(|r| name(r).len()).max().unwrap_or(6).max(6);
    let mut out = format!("{:<width$}", "CGROUP");
    for c in &columns {
        match c.read {
            Read::PerSource(_) => {
                for s in Source::ALL {
                    out.push_str(&format!("  {:>10}", s.key().to_uppercase()));
                }
            }
            Read::Bytes(_) | Read::Limit(_) | Read::Events(_) => out.push_str(&format!("  {:>10}", c.header)),
        }
    }
    out.push('\n');
    for r in rows {
        out.push_str(&format!("{:<width$}", name(r)));
        for c in &columns {
            match c.read {
                Read::Bytes(read) => out.push_str(&format!("  {:>10}", format_human(read(r)))),
                Read::Limit(read) => out.push_str(&format!("  {:>10}", human_limit(read(r)))),
                Read::PerSource(read) => {
                    for (_, bytes) in read(r).iter() {
                        out.push_str(&format!("  {:>10}", format_human(bytes)));
                    }
                }
                Read::Events(read) => {
                    out.push_str(&format!("  {:>10}", events_text(read(r))));
                }
            }
        }
        out.push('\n');
    }
    out
}

pub fn render_json(rows: &[&CgroupRow], snapshot: &Snapshot) -> serde_json::Value {
    let cgroups: Vec<_> = rows.iter().map(|r| columns::json(r)).collect();
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
