//! The per-cgroup values, declared once: each column's `--json` key, table
//! header, metric name, metric type and help text, and how to read it from
//! a row. `pincg status`, `pincg top`, `--json` and `/metrics` all render
//! [`COLUMNS`]; a column added here shows in every one of them, and each
//! renderer matches [`Read`] exhaustively, so a new kind of value that a
//! renderer forgets does not compile.

use pincg_cgroup_spec::{format_human, Events, Limit, PerSource};
use serde_json::json;

use crate::snapshot::CgroupRow;

/// How a column reads its value from a row, by kind of value.
#[derive(Clone, Copy)]
pub enum Read {
    /// Bytes (a gauge).
    Bytes(fn(&CgroupRow) -> u64),
    /// A limit in force, if any: bytes, or `max` (no series either way
    /// but bytes).
    Limit(fn(&CgroupRow) -> Option<Limit>),
    /// Bytes per source (a gauge with a `source` label; one table column
    /// per source in `status`, the sources with bytes in `top`).
    PerSource(fn(&CgroupRow) -> &PerSource),
    /// Counts per event (a counter with an `event` label).
    Events(fn(&CgroupRow) -> &Events),
}

pub struct Column {
    /// The `--json` key.
    pub key: &'static str,
    /// The table header (`status` heads a `PerSource` column's sources by
    /// their keys instead).
    pub header: &'static str,
    pub metric: &'static str,
    /// `gauge` or `counter`.
    pub kind: &'static str,
    pub help: &'static str,
    /// Shown in the `status` and `top` tables (every column is in
    /// `--json` and `/metrics`).
    pub in_tables: bool,
    pub read: Read,
}

/// Every per-cgroup value, in table order.
pub const COLUMNS: &[Column] = &[
    Column {
        key: "current",
        header: "CURRENT",
        metric: "pincg_current_bytes",
        kind: "gauge",
        help: "pins.current: all sources, the cgroup and its descendants.",
        in_tables: true,
        read: Read::Bytes(|r| r.current()),
    },
    Column {
        key: "max",
        header: "MAX",
        metric: "pincg_limit_bytes",
        kind: "gauge",
        help: "pins.max in force; cgroups without a limit have no series.",
        in_tables: true,
        read: Read::Limit(|r| r.limit.map(|l| l.max)),
    },
    Column {
        key: "high",
        header: "HIGH",
        metric: "pincg_high_bytes",
        kind: "gauge",
        help: "pins.high in force; cgroups without one have no series.",
        in_tables: false,
        read: Read::Limit(|r| r.limit.map(|l| l.high)),
    },
    Column {
        key: "peak",
        header: "PEAK",
        metric: "pincg_peak_bytes",
        kind: "gauge",
        help: "pins.peak: the highest pins.current seen.",
        in_tables: true,
        read: Read::Bytes(|r| r.peak),
    },
    Column {
        key: "stat",
        header: "SOURCES",
        metric: "pincg_pinned_bytes",
        kind: "gauge",
        help: "Bytes of long-term pinned pages charged to the cgroup and its descendants, by source.",
        in_tables: true,
        read: Read::PerSource(|r| &r.total),
    },
    Column {
        key: "events",
        header: "EVENTS",
        metric: "pincg_events_total",
        kind: "counter",
        help: "pins.events: pins.high crossings (high) and requests refused or overruns at pins.max (max), in the \
               cgroup and its descendants.",
        in_tables: false,
        read: Read::Events(|r| &r.events),
    },
];

/// The events of [`Value::Events`], with their label values.
pub fn events(e: &Events) -> [(&'static str, u64); 2] {
    [("high", e.high), ("max", e.max)]
}

/// Events for people: `high 1 max 2`.
pub fn events_text(e: &Events) -> String {
    events(e).iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(" ")
}

/// A limit for people: `max` (also for none), or bytes in human units.
pub fn human_limit(limit: Option<Limit>) -> String {
    match limit {
        Some(Limit::Bytes(b)) => format_human(b),
        _ => "max".into(),
    }
}

/// The row as `--json` gives it: identity, then every column by key, and
/// `limit` (max, high and action in force, or null).
pub fn json(row: &CgroupRow) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    out.insert("cgroup".into(), json!(row.label()));
    out.insert("id".into(), json!(row.id));
    out.insert("removed".into(), json!(row.path.is_none()));
    for c in COLUMNS {
        let value = match c.read {
            Read::Bytes(read) => json!(read(row)),
            Read::Limit(read) => read(row).map_or(serde_json::Value::Null, |l| json!(l.to_string())),
            Read::PerSource(read) => read(row).iter().map(|(s, b)| (s.key().to_string(), json!(b))).collect(),
            Read::Events(read) => events(read(row)).iter().map(|(k, n)| (k.to_string(), json!(n))).collect(),
        };
        out.insert(c.key.into(), value);
    }
    let limit = row.limit.map(|l| json!({"max": l.max.to_string(), "high": l.high.to_string(), "action": l.action}));
    out.insert("limit".into(), limit.unwrap_or(serde_json::Value::Null));
    serde_json::Value::Object(out)
}

#[cfg(test)]
mod tests {
    use pincg_bpf::ledger::CgroupLimit;
    use pincg_cgroup_spec::{Action, Source};

    use super::*;

    #[test]
    fn every_key_header_and_metric_is_unique() {
        for (i, a) in COLUMNS.iter().enumerate() {
            for b in &COLUMNS[i + 1..] {
                assert!(a.key != b.key && a.header != b.header && a.metric != b.metric, "{} / {}", a.key, b.key);
            }
        }
    }

    #[test]
    fn every_renderer_shows_every_column() {
        let snapshot = crate::snapshot::Snapshot {
            rows: vec![CgroupRow::sample("", Source::IoUring, 4096), CgroupRow::sample("vm", Source::IoUring, 4096)],
            ..Default::default()
        };
        let rows: Vec<&CgroupRow> = snapshot.rows.iter().collect();
        let status = crate::status::render_table(&rows);
        let top = crate::top::render(&snapshot, 10);
        let metrics = crate::metrics::render(&snapshot, &crate::metrics::Filter::default());
        let json = json(&snapshot.rows[1]);
        for c in COLUMNS {
            assert!(metrics.contains(&format!("# TYPE {} {}\n", c.metric, c.kind)), "{}: {metrics}", c.metric);
            assert!(json.get(c.key).is_some(), "{}: {json}", c.key);
            if !c.in_tables {
                continue;
            }
            let header = match c.read {
                Read::PerSource(_) => "IO_URING",
                _ => c.header,
            };
            assert!(status.lines().next().unwrap().contains(header), "{}: {status}", c.key);
            assert!(top.contains(c.header), "{}: {top}", c.key);
        }
    }

    #[test]
    fn json_has_every_column_and_the_limit() {
        let mut row = CgroupRow::sample("vm", Source::Vfio, 4096);
        let v = json(&row);
        assert_eq!(v["current"], 4096);
        assert_eq!(v["max"], serde_json::Value::Null);
        assert_eq!(v["stat"]["vfio"], 4096);
        assert_eq!(v["events"]["max"], 0);
        assert_eq!(v["limit"], serde_json::Value::Null);
        row.limit = Some(CgroupLimit { max: Limit::Bytes(8192), high: Limit::Max, action: Action::Kill });
        let v = json(&row);
        assert_eq!(v["max"], "8192");
        assert_eq!(v["high"], "max");
        assert_eq!(v["limit"]["action"], "kill");
    }
}
