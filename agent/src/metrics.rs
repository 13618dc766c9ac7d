//! Prometheus text exposition (format 0.0.4) of a [`Snapshot`].
//!
//! Written directly into one string: a node with 10,000 cgroups has over
//! 100,000 series, and building them through the `prometheus` crate's
//! registry took seconds per scrape in the scale benchmark (see
//! docs/performance.md). Every scrape renders the latest snapshot, so the
//! series of a vanished cgroup disappear with it. Labels are written sorted
//! by name, as Prometheus' own encoders do.

use std::fmt::{Display, Write};

use pincg_cgroup_spec::Limit;

use crate::columns::{events, Read, COLUMNS};
use crate::snapshot::{CgroupRow, Snapshot};

/// Which cgroups get per-cgroup series: every cgroup can mean thousands of
/// idle systemd units, so by default only cgroups with something to say
/// (pins, a limit, events, a peak) and the root.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Also the idle cgroups.
    pub all_cgroups: bool,
    /// Only cgroups under one of these paths (`/machine.slice`); empty: all.
    pub prefixes: Vec<String>,
}

impl Filter {
    /// Whether `row` (whose label is `label`) gets series.
    fn keeps(&self, row: &CgroupRow, label: &str) -> bool {
        let under = self.prefixes.is_empty()
            || self.prefixes.iter().any(|p| label == *p || label.starts_with(&format!("{}/", p.trim_end_matches('/'))));
        let busy = row.current() > 0 || row.peak > 0 || row.limit.is_some() || row.events.max + row.events.high > 0;
        row.path.as_deref() == Some("") || (under && (busy || self.all_cgroups))
    }
}

/// Builds the exposition text, one metric family at a time.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample; `labels` in any order (they are written sorted).
    fn sample(&mut self, name: &str, labels: &mut [(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            labels.sort_unstable_by_key(|(k, _)| *k);
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(key);
                self.out.push_str("=\"");
                for ch in value.chars() {
                    match ch {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// The identity labels every per-cgroup series carries.
fn cgroup_labels<'a>(row: &'a CgroupRow, label: &'a str) -> [(&'static str, &'a str); 7] {
    let id = &row.identity;
    [
        ("cgroup", label),
        ("pod_uid", id.pod_uid.as_str()),
        ("container_id", id.container_id.as_str()),
        ("qos", id.qos.as_str()),
        ("vm", id.vm.as_str()),
        ("namespace", id.namespace.as_str()),
        ("pod", id.pod.as_str()),
    ]
}

/// Render the snapshot as Prometheus text format 0.0.4.
pub fn render(snapshot: &Snapshot, filter: &Filter) -> String {
    let rows: Vec<(&CgroupRow, String)> =
        snapshot.rows.iter().map(|r| (r, r.label())).filter(|(r, label)| filter.keeps(r, label)).collect();
    let mut e = Exposition { out: String::with_capacity(rows.len() * 1200 + 4096) };

    for c in COLUMNS {
        e.family(c.metric, c.kind, c.help);
        for (row, label) in &rows {
            match c.read {
                Read::Bytes(read) => e.sample(c.metric, &mut cgroup_labels(row, label), read(row)),
                Read::Limit(read) => {
                    if let Some(Limit::Bytes(b)) = read(row) {
                        e.sample(c.metric, &mut cgroup_labels(row, label), b);
                    }
                }
                Read::PerSource(read) => {
                    for (source, bytes) in read(row).iter() {
                        let mut l = [&cgroup_labels(row, label)[..], &[("source", source.key())]].concat();
                        e.sample(c.metric, &mut l, bytes);
                    }
                }
                Read::Events(read) => {
                    for (event, n) in events(read(row)) {
                        let mut l = [&cgroup_labels(row, label)[..], &[("event", event)]].concat();
                        e.sample(c.metric, &mut l, n);
                    }
                }
            }
        }
    }

    e.family(
        "pincg_refusals_total",
        "counter",
        "Pin requests over a pins.max at a refusal point: refused (enforce) or would_refuse (monitor).",
    );
    for (source, a) in &snapshot.actions {
        for (outcome, n) in [("refused", a.refused), ("would_refuse", a.would_refuse)] {
            e.sample("pincg_refusals_total", &mut [("source", source.key()), ("outcome", outcome)], n);
        }
    }
    e.family("pincg_overruns_total", "counter", "Pins that took a cgroup over pins.max where nothing refused them.");
    for (source, a) in &snapshot.actions {
        e.sample("pincg_overruns_total", &mut [("source", source.key())], a.overruns);
    }
    e.family("pincg_kills_total", "counter", "Pinning tasks killed by the kill action.");
    for (source, a) in &snapshot.actions {
        e.sample("pincg_kills_total", &mut [("source", source.key())], a.killed);
    }
    e.family(
        "pincg_node_budget_bytes",
        "gauge",
        "Bytes all long-term pins on the node together may not exceed (the agent's node_budget); no series without one.",
    );
    if let Some(bytes) = snapshot.node_budget {
        e.sample("pincg_node_budget_bytes", &mut [], bytes);
    }
    e.family("pincg_mode", "gauge", "1 for the enforcement mode in force.");
    if let Some(m) = snapshot.mode {
        e.sample("pincg_mode", &mut [("mode", m.to_string().as_str())], 1);
    }
    e.family(
        "pincg_limit_errors_total",
        "counter",
        "Limit files refused (garbage, symlink, too large…); the previous limit stayed in force.",
    );
    e.sample("pincg_limit_errors_total", &mut [], snapshot.limit_errors);
    if let Some((connected, refused)) = snapshot.nri {
        e.family("pincg_nri_connected", "gauge", "1 while pincg is registered with the runtime's NRI socket.");
        e.sample("pincg_nri_connected", &mut [], u64::from(connected));
        e.family(
            "pincg_nri_annotations_refused_total",
            "counter",
            "Pod annotations not applied (unparsable, or raising a budget the node policy does not let the pod raise).",
        );
        e.sample("pincg_nri_annotations_refused_total", &mut [], refused);
    }

    e.family(
        "pincg_preexisting_pinned_bytes",
        "gauge",
        "Bytes pinned or locked (VmPin + VmLck) by processes that held them before pincg's ledger existed; not in pins.current.",
    );
    for (cgroup, bytes) in &snapshot.preexisting {
        e.sample("pincg_preexisting_pinned_bytes", &mut [("cgroup", cgroup.as_str())], bytes);
    }
    e.family(
        "pincg_preexisting_scan_complete",
        "gauge",
        "1 if the scan at start for pins from before pincg's ledger read every process; 0 if they are unknown (no host PID namespace, or open files the agent may not read: see its log). No series when no scan ran.",
    );
    if let Some(complete) = snapshot.preexisting_complete {
        e.sample("pincg_preexisting_scan_complete", &mut [], u8::from(complete));
    }
    e.family("pincg_hook_attached", "gauge", "1 if the hook's BPF program is attached, 0 if unavailable.");
    for h in &snapshot.hooks {
        e.sample("pincg_hook_attached", &mut [("hook", h.hook), ("source", h.source.key())], u8::from(h.is_live()));
    }
    e.family(
        "pincg_source_enforcement",
        "gauge",
        "1 for how each source's budget is enforced on this kernel, as pincg probe says: refuse, act after, none.",
    );
    for source in pincg_cgroup_spec::Source::ALL {
        let word = crate::probe::enforcement(&snapshot.hooks, source).word();
        e.sample("pincg_source_enforcement", &mut [("enforcement", word), ("source", source.key())], 1);
    }
    e.family("pincg_ledger_objects", "gauge", "Live long-term pin objects in the ledger.");
    e.sample("pincg_ledger_objects", &mut [], snapshot.objects);
    e.family(
        "pincg_ledger_capacity",
        "gauge",
        "Entries the ledger maps can hold; pincg_ledger_objects / this is the objects map's fullness.",
    );
    for (map, capacity) in &snapshot.capacity {
        e.sample("pincg_ledger_capacity", &mut [("map", map)], capacity);
    }
    e.family(
        "pincg_ledger_usage_reserve",
        "gauge",
        "Entries of the usage map kept for cgroups given a limit (the BPF programs cannot fill them), still free.",
    );
    e.sample("pincg_ledger_usage_reserve", &mut [], snapshot.usage_reserve);
    e.family(
        "pincg_sample_duration_seconds",
        "gauge",
        "How long the last read of the ledger and the cgroup tree took.",
    );
    e.sample("pincg_sample_duration_seconds", &mut [], snapshot.sample_duration.as_secs_f64());
    e.family("pincg_agent_resident_bytes", "gauge", "Resident memory of the agent process.");
    let rss = procfs::process::Process::myself().and_then(|p| p.status()).map(|s| s.vmrss.unwrap_or(0) * 1024);
    e.sample("pincg_agent_resident_bytes", &mut [], rss.unwrap_or(0));

    let c = &snapshot.counters;
    e.family("pincg_ledger_events_total", "counter", "Ledger operations and anomalies seen by the BPF programs.");
    for (event, n) in [
        ("charge", c.charges),
        ("release", c.releases),
        ("ledger_full", c.ledger_full),
        ("usage_full", c.usage_full),
        ("stale_object", c.stale_objects),
        ("unknown_release", c.unknown_releases),
        ("spans_full", c.spans_full),
        ("requests_full", c.requests_full),
        ("ledger_room", c.ledger_room),
        ("program_skipped", snapshot.programs_skipped),
        ("probe_missed", snapshot.probes_missed),
    ] {
        e.sample("pincg_ledger_events_total", &mut [("event", event)], n);
    }
    e.family("pincg_build_info", "gauge", "Always 1; labels carry the agent's version.");
    e.sample("pincg_build_info", &mut [("version", env!("CARGO_PKG_VERSION"))], 1);
    e.out
}

#[cfg(test)]
mod tests {
    use pincg_bpf::ledger::CgroupLimit;
    use pincg_cgroup_spec::{Action, Events, Source};

    use super::*;

    #[test]
    fn exposes_per_cgroup_per_source_bytes() {
        let snapshot = Snapshot {
            rows: vec![CgroupRow {
                events: Events { high: 1, max: 0 },
                limit: Some(CgroupLimit { max: Limit::Bytes(1 << 30), high: Limit::Max, action: Action::Alert }),
                ..CgroupRow::sample("vm.slice/a", Source::IoUring, 67108864)
            }],
            ..Snapshot::default()
        };
        let text = render(&snapshot, &Filter::default());
        // The encoder sorts labels by name.
        let labels = "cgroup=\"/vm.slice/a\",container_id=\"\",namespace=\"\",pod=\"\",pod_uid=\"\",qos=\"\",vm=\"\"";
        let with = |extra: &str| labels.replace(",vm=", &format!(",{extra},vm="));
        let pinned = |source: &str| with(&format!("source=\"{source}\""));
        assert!(text.contains(&format!("pincg_pinned_bytes{{{}}} 67108864\n", pinned("io_uring"))), "{text}");
        assert!(text.contains(&format!("pincg_pinned_bytes{{{}}} 0\n", pinned("vfio"))));
        assert!(text.contains(&format!("pincg_current_bytes{{{labels}}} 67108864\n")));
        assert!(text.contains("# TYPE pincg_ledger_events_total counter\n"));
        assert!(text.contains(&format!("pincg_limit_bytes{{{labels}}} 1073741824\n")), "{text}");
        let high = labels.replace(",namespace=", ",event=\"high\",namespace=");
        assert!(text.contains(&format!("pincg_events_total{{{high}}} 1\n")), "{text}");
        assert!(!text.contains("pincg_high_bytes{"), "no series for an unset pins.high");
        assert!(!text.contains("\npincg_node_budget_bytes "), "no series without a node budget");
        assert!(text.contains("pincg_source_enforcement{enforcement=\"none\",source=\"vfio\"} 1\n"), "no hooks: none");
        let budgeted = render(&Snapshot { node_budget: Some(100663296), ..Snapshot::default() }, &Filter::default());
        assert!(budgeted.contains("\npincg_node_budget_bytes 100663296\n"), "{budgeted}");
    }

    #[test]
    fn the_filter_bounds_cardinality() {
        let row = |path: &str, bytes: u64| CgroupRow::sample(path, Source::Vfio, bytes);
        let snapshot = Snapshot {
            rows: vec![row("", 1), row("system.slice/idle.service", 0), row("machine.slice/vm", 1), row("other", 1)],
            ..Snapshot::default()
        };
        let cgroups = |filter: &Filter| -> Vec<String> {
            snapshot
                .rows
                .iter()
                .map(CgroupRow::label)
                .zip(&snapshot.rows)
                .filter(|(l, r)| filter.keeps(r, l))
                .map(|(l, _)| l)
                .collect()
        };
        assert_eq!(cgroups(&Filter::default()), ["/", "/machine.slice/vm", "/other"]);
        assert_eq!(cgroups(&Filter { all_cgroups: true, prefixes: vec![] }).len(), 4);
        let machines = Filter { all_cgroups: false, prefixes: vec!["/machine.slice".into()] };
        assert_eq!(cgroups(&machines), ["/", "/machine.slice/vm"]);
    }
}
