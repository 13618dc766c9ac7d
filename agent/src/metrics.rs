//! Prometheus text exposition of a [`Snapshot`].
//!
//! A fresh registry is filled from the snapshot at every scrape, so the
//! series of a vanished cgroup disappear with it.

use pincg_cgroup_spec::Limit;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

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
    fn keeps(&self, row: &CgroupRow) -> bool {
        let label = row.label();
        let under = self.prefixes.is_empty()
            || self.prefixes.iter().any(|p| label == *p || label.starts_with(&format!("{}/", p.trim_end_matches('/'))));
        let busy = row.current() > 0 || row.peak > 0 || row.limit.is_some() || row.events.max + row.events.high > 0;
        row.path.as_deref() == Some("") || (under && (busy || self.all_cgroups))
    }
}

/// The labels of every per-cgroup series, in this order.
const CGROUP_LABELS: [&str; 5] = ["cgroup", "pod_uid", "container_id", "qos", "vm"];

fn cgroup_labels(row: &CgroupRow) -> [String; 5] {
    let id = &row.identity;
    [row.label(), id.pod_uid.clone(), id.container_id.clone(), id.qos.clone(), id.vm.clone()]
}

/// Render the snapshot as Prometheus text format 0.0.4.
pub fn render(snapshot: &Snapshot, filter: &Filter) -> String {
    let registry = Registry::new();
    fill(&registry, snapshot, filter).expect("metric definitions are static and valid");
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("encoding to memory cannot fail");
    String::from_utf8(out).expect("the text encoder writes UTF-8")
}

fn fill(registry: &Registry, snapshot: &Snapshot, filter: &Filter) -> prometheus::Result<()> {
    let pinned = IntGaugeVec::new(
        Opts::new(
            "pincg_pinned_bytes",
            "Bytes of long-term pinned pages charged to the cgroup and its descendants, by source.",
        ),
        &[&CGROUP_LABELS[..], &["source"]].concat(),
    )?;
    let current = IntGaugeVec::new(
        Opts::new("pincg_current_bytes", "pins.current: all sources, the cgroup and its descendants."),
        &CGROUP_LABELS,
    )?;
    let peak = IntGaugeVec::new(Opts::new("pincg_peak_bytes", "pins.peak: the highest pins.current seen."), &CGROUP_LABELS)?;
    let limit = IntGaugeVec::new(
        Opts::new("pincg_limit_bytes", "pins.max in force; cgroups without a limit have no series."),
        &CGROUP_LABELS,
    )?;
    let high = IntGaugeVec::new(
        Opts::new("pincg_high_bytes", "pins.high in force; cgroups without one have no series."),
        &CGROUP_LABELS,
    )?;
    let events = IntCounterVec::new(
        Opts::new(
            "pincg_events_total",
            "pins.events: pins.high crossings (high) and requests refused or overruns at pins.max (max), in the cgroup and its descendants.",
        ),
        &[&CGROUP_LABELS[..], &["event"]].concat(),
    )?;
    for row in snapshot.rows.iter().filter(|r| filter.keeps(r)) {
        let owned = cgroup_labels(row);
        let c: Vec<&str> = owned.iter().map(String::as_str).collect();
        let with = |extra: &'static str| [&c[..], &[extra]].concat();
        current.with_label_values(&c).set(clamp(row.current()));
        peak.with_label_values(&c).set(clamp(row.peak));
        for (source, bytes) in row.total.iter() {
            pinned.with_label_values(&with(source.key())).set(clamp(bytes));
        }
        events.with_label_values(&with("high")).inc_by(row.events.high);
        events.with_label_values(&with("max")).inc_by(row.events.max);
        if let Some(l) = &row.limit {
            if let Limit::Bytes(b) = l.max {
                limit.with_label_values(&c).set(clamp(b));
            }
            if let Limit::Bytes(b) = l.high {
                high.with_label_values(&c).set(clamp(b));
            }
        }
    }

    let refusals = IntCounterVec::new(
        Opts::new(
            "pincg_refusals_total",
            "Pin requests over a pins.max at a refusal point: refused (enforce) or would_refuse (monitor).",
        ),
        &["source", "outcome"],
    )?;
    let overruns = IntCounterVec::new(
        Opts::new("pincg_overruns_total", "Pins that took a cgroup over pins.max where nothing refused them."),
        &["source"],
    )?;
    let kills = IntCounterVec::new(
        Opts::new("pincg_kills_total", "Pinning tasks killed by the kill action."),
        &["source"],
    )?;
    for (source, a) in &snapshot.actions {
        refusals.with_label_values(&[source.key(), "refused"]).inc_by(a.refused);
        refusals.with_label_values(&[source.key(), "would_refuse"]).inc_by(a.would_refuse);
        overruns.with_label_values(&[source.key()]).inc_by(a.overruns);
        kills.with_label_values(&[source.key()]).inc_by(a.killed);
    }
    let mode = IntGaugeVec::new(Opts::new("pincg_mode", "1 for the enforcement mode in force."), &["mode"])?;
    if let Some(m) = snapshot.mode {
        mode.with_label_values(&[m.to_string().as_str()]).set(1);
    }
    let limit_errors = IntCounter::new(
        "pincg_limit_errors_total",
        "Limit files refused (garbage, symlink, too large…); the previous limit stayed in force.",
    )?;
    limit_errors.inc_by(snapshot.limit_errors);

    let hooks = IntGaugeVec::new(
        Opts::new("pincg_hook_attached", "1 if the hook's BPF program is attached, 0 if unavailable."),
        &["hook", "source"],
    )?;
    for h in &snapshot.hooks {
        hooks.with_label_values(&[h.hook, h.source.key()]).set(i64::from(h.is_live()));
    }

    let objects = IntGauge::new("pincg_ledger_objects", "Live long-term pin objects in the ledger.")?;
    objects.set(snapshot.objects as i64);

    let c = &snapshot.counters;
    let ledger = IntCounterVec::new(
        Opts::new("pincg_ledger_events_total", "Ledger operations and anomalies seen by the BPF programs."),
        &["event"],
    )?;
    for (event, n) in [
        ("charge", c.charges),
        ("release", c.releases),
        ("ledger_full", c.ledger_full),
        ("usage_full", c.usage_full),
        ("stale_object", c.stale_objects),
        ("unknown_release", c.unknown_releases),
    ] {
        ledger.with_label_values(&[event]).inc_by(n);
    }

    let build = IntGaugeVec::new(
        Opts::new("pincg_build_info", "Always 1; labels carry the agent's version."),
        &["version"],
    )?;
    build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

    for collector in [
        Box::new(pinned) as Box<dyn prometheus::core::Collector>,
        Box::new(current),
        Box::new(peak),
        Box::new(limit),
        Box::new(high),
        Box::new(events),
        Box::new(refusals),
        Box::new(overruns),
        Box::new(kills),
        Box::new(mode),
        Box::new(limit_errors),
        Box::new(hooks),
        Box::new(objects),
        Box::new(ledger),
        Box::new(build),
    ] {
        registry.register(collector)?;
    }
    Ok(())
}

fn clamp(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
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
        let labels = "cgroup=\"/vm.slice/a\",container_id=\"\",pod_uid=\"\",qos=\"\",vm=\"\"";
        let with = |extra: &str| labels.replace(",vm=", &format!(",{extra},vm="));
        let pinned = |source: &str| with(&format!("source=\"{source}\""));
        assert!(text.contains(&format!("pincg_pinned_bytes{{{}}} 67108864\n", pinned("io_uring"))), "{text}");
        assert!(text.contains(&format!("pincg_pinned_bytes{{{}}} 0\n", pinned("vfio"))));
        assert!(text.contains(&format!("pincg_current_bytes{{{labels}}} 67108864\n")));
        assert!(text.contains("# TYPE pincg_ledger_events_total counter\n"));
        assert!(text.contains(&format!("pincg_limit_bytes{{{labels}}} 1073741824\n")), "{text}");
        let high = labels.replace(",pod_uid=", ",event=\"high\",pod_uid=");
        assert!(text.contains(&format!("pincg_events_total{{{high}}} 1\n")), "{text}");
        assert!(!text.contains("pincg_high_bytes{"), "no series for an unset pins.high");
    }

    #[test]
    fn the_filter_bounds_cardinality() {
        let row = |path: &str, bytes: u64| CgroupRow::sample(path, Source::Vfio, bytes);
        let snapshot = Snapshot {
            rows: vec![row("", 1), row("system.slice/idle.service", 0), row("machine.slice/vm", 1), row("other", 1)],
            ..Snapshot::default()
        };
        let cgroups = |filter: &Filter| -> Vec<String> {
            snapshot.rows.iter().filter(|r| filter.keeps(r)).map(CgroupRow::label).collect()
        };
        assert_eq!(cgroups(&Filter::default()), ["/", "/machine.slice/vm", "/other"]);
        assert_eq!(cgroups(&Filter { all_cgroups: true, prefixes: vec![] }).len(), 4);
        let machines = Filter { all_cgroups: false, prefixes: vec!["/machine.slice".into()] };
        assert_eq!(cgroups(&machines), ["/", "/machine.slice/vm"]);
    }
}
