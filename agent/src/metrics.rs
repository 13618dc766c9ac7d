//! Prometheus text exposition of a [`Snapshot`].
//!
//! A fresh registry is filled from the snapshot at every scrape, so the
//! series of a vanished cgroup disappear with it.

use pincg_cgroup_spec::Limit;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::snapshot::Snapshot;

/// Render the snapshot as Prometheus text format 0.0.4.
pub fn render(snapshot: &Snapshot) -> String {
    let registry = Registry::new();
    fill(&registry, snapshot).expect("metric definitions are static and valid");
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("encoding to memory cannot fail");
    String::from_utf8(out).expect("the text encoder writes UTF-8")
}

fn fill(registry: &Registry, snapshot: &Snapshot) -> prometheus::Result<()> {
    let pinned = IntGaugeVec::new(
        Opts::new(
            "pincg_pinned_bytes",
            "Bytes of long-term pinned pages charged to the cgroup and its descendants, by source.",
        ),
        &["cgroup", "source"],
    )?;
    let current = IntGaugeVec::new(
        Opts::new("pincg_current_bytes", "pins.current: all sources, the cgroup and its descendants."),
        &["cgroup"],
    )?;
    let peak = IntGaugeVec::new(Opts::new("pincg_peak_bytes", "pins.peak: the highest pins.current seen."), &["cgroup"])?;
    let limit = IntGaugeVec::new(
        Opts::new("pincg_limit_bytes", "pins.max in force; cgroups without a limit have no series."),
        &["cgroup"],
    )?;
    let high = IntGaugeVec::new(
        Opts::new("pincg_high_bytes", "pins.high in force; cgroups without one have no series."),
        &["cgroup"],
    )?;
    let events = IntCounterVec::new(
        Opts::new(
            "pincg_events_total",
            "pins.events: pins.high crossings (high) and requests refused or overruns at pins.max (max), in the cgroup and its descendants.",
        ),
        &["cgroup", "event"],
    )?;
    for row in &snapshot.rows {
        let cgroup = row.label();
        let c = cgroup.as_str();
        current.with_label_values(&[c]).set(clamp(row.current()));
        peak.with_label_values(&[c]).set(clamp(row.peak));
        for (source, bytes) in row.total.iter() {
            pinned.with_label_values(&[c, source.key()]).set(clamp(bytes));
        }
        events.with_label_values(&[c, "high"]).inc_by(row.events.high);
        events.with_label_values(&[c, "max"]).inc_by(row.events.max);
        if let Some(l) = &row.limit {
            if let Limit::Bytes(b) = l.max {
                limit.with_label_values(&[c]).set(clamp(b));
            }
            if let Limit::Bytes(b) = l.high {
                high.with_label_values(&[c]).set(clamp(b));
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
    use pincg_cgroup_spec::{Action, Events, PerSource};

    use super::*;
    use crate::snapshot::CgroupRow;

    #[test]
    fn exposes_per_cgroup_per_source_bytes() {
        let total = PerSource([0, 0, 0, 67108864, 0, 0]);
        let snapshot = Snapshot {
            rows: vec![CgroupRow {
                id: 9,
                path: Some("vm.slice/a".into()),
                total,
                local: total,
                peak: total.total(),
                events: Events { high: 1, max: 0 },
                events_local: Events::default(),
                limit: Some(CgroupLimit { max: Limit::Bytes(1 << 30), high: Limit::Max, action: Action::Alert }),
            }],
            ..Snapshot::default()
        };
        let text = render(&snapshot);
        assert!(text.contains("pincg_pinned_bytes{cgroup=\"/vm.slice/a\",source=\"io_uring\"} 67108864\n"), "{text}");
        assert!(text.contains("pincg_pinned_bytes{cgroup=\"/vm.slice/a\",source=\"vfio\"} 0\n"));
        assert!(text.contains("pincg_current_bytes{cgroup=\"/vm.slice/a\"} 67108864\n"));
        assert!(text.contains("# TYPE pincg_ledger_events_total counter\n"));
        assert!(text.contains("pincg_limit_bytes{cgroup=\"/vm.slice/a\"} 1073741824\n"), "{text}");
        assert!(text.contains("pincg_events_total{cgroup=\"/vm.slice/a\",event=\"high\"} 1\n"));
        assert!(!text.contains("pincg_high_bytes{"), "no series for an unset pins.high");
    }
}
