//! Prometheus text exposition of a [`Snapshot`].
//!
//! A fresh registry is filled from the snapshot at every scrape, so the
//! series of a vanished cgroup disappear with it.

use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

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
    for row in &snapshot.rows {
        let cgroup = row.label();
        current.with_label_values(&[cgroup.as_str()]).set(clamp(row.current()));
        for (source, bytes) in row.total.iter() {
            pinned.with_label_values(&[cgroup.as_str(), source.key()]).set(clamp(bytes));
        }
    }

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
    use pincg_cgroup_spec::PerSource;

    use super::*;
    use crate::snapshot::CgroupRow;

    #[test]
    fn exposes_per_cgroup_per_source_bytes() {
        let total = PerSource([0, 0, 0, 67108864, 0, 0]);
        let snapshot = Snapshot {
            rows: vec![CgroupRow { id: 9, path: Some("vm.slice/a".into()), total, local: total }],
            ..Snapshot::default()
        };
        let text = render(&snapshot);
        assert!(text.contains("pincg_pinned_bytes{cgroup=\"/vm.slice/a\",source=\"io_uring\"} 67108864\n"), "{text}");
        assert!(text.contains("pincg_pinned_bytes{cgroup=\"/vm.slice/a\",source=\"vfio\"} 0\n"));
        assert!(text.contains("pincg_current_bytes{cgroup=\"/vm.slice/a\"} 67108864\n"));
        assert!(text.contains("# TYPE pincg_ledger_events_total counter\n"));
    }
}
