//! A pod's budget from what NRI reports of it: its annotations, the node
//! policy (`[nri]` of the configuration file) and, for KubeVirt's
//! virt-launcher pods, the VM's memory. Pure: facts in, decision out.
//!
//! Annotations are written by pod authors, so they may only lower the
//! node's default unless the pod's namespace is in `raise_namespaces`; an
//! annotation refused is reported (log line, counter) and the default
//! applies, never the annotation.

use std::collections::HashMap;

use pincg_cgroup_spec::config::{Nri, PodDefault};
use pincg_cgroup_spec::{parse_action, parse_limit, Action, Limit};

/// The annotation keys: the interface files' names under pincg.io/.
pub const MAX: &str = "pincg.io/pins.max";
pub const HIGH: &str = "pincg.io/pins.high";
pub const ACTION: &str = "pincg.io/pins.max.action";

/// KubeVirt marks its VM pods with this label and value.
const KUBEVIRT_LABEL: (&str, &str) = ("kubevirt.io", "virt-launcher");
/// The VMI a virt-launcher pod runs (annotation), or its VM (label).
const KUBEVIRT_DOMAIN: &str = "kubevirt.io/domain";
const KUBEVIRT_VM: &str = "vm.kubevirt.io/name";

/// What the runtime told about a pod.
#[derive(Debug, Default, Clone)]
pub struct PodFacts<'a> {
    pub namespace: &'a str,
    pub labels: Option<&'a HashMap<String, String>>,
    pub annotations: Option<&'a HashMap<String, String>>,
    /// The pod's memory limit (all its containers'), if it has one.
    pub memory_limit: Option<u64>,
}

/// A pod's limits, as the interface files take them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub max: Limit,
    pub high: Limit,
    pub action: Action,
}

/// An annotation not applied, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub key: &'static str,
    pub value: String,
    pub reason: String,
}

/// Where a pod's pins.max came from, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Annotation,
    NodeDefault,
    MemoryLimit,
    KubevirtVm,
    /// No budget: nothing gave one.
    Nothing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// `None`: leave the pod without a limit.
    pub budget: Option<Budget>,
    pub origin: Origin,
    pub refused: Vec<Refusal>,
}

/// The VM a virt-launcher pod runs, if it is one.
pub fn kubevirt_vm(facts: &PodFacts) -> Option<String> {
    let label = |k: &str| facts.labels.and_then(|l| l.get(k));
    if label(KUBEVIRT_LABEL.0).map(String::as_str) != Some(KUBEVIRT_LABEL.1) {
        return None;
    }
    let domain = facts.annotations.and_then(|a| a.get(KUBEVIRT_DOMAIN));
    Some(domain.or(label(KUBEVIRT_VM)).cloned().unwrap_or_default())
}

/// The budget of the pod described by `facts` under `policy`.
pub fn decide(policy: &Nri, facts: &PodFacts) -> Decision {
    let with_overhead = |m: u64| m.saturating_add(policy.overhead);
    let (default, mut origin) = match (policy.pod_default, facts.memory_limit) {
        (PodDefault::Bytes(b), _) => (Some(b), Origin::NodeDefault),
        (PodDefault::MemoryLimit, Some(m)) => (Some(with_overhead(m)), Origin::MemoryLimit),
        // A VM's memory is what KubeVirt puts in the pod's memory limit
        // (guest RAM plus its own overhead): the RAM VFIO pins whole.
        _ => match (kubevirt_vm(facts), facts.memory_limit) {
            (Some(_), Some(m)) => (Some(with_overhead(m)), Origin::KubevirtVm),
            _ => (None, Origin::Nothing),
        },
    };
    let trusted = policy.raise_namespaces.iter().any(|n| n == facts.namespace);
    let mut refused = Vec::new();
    let annotation = |key: &'static str| facts.annotations.and_then(|a| a.get(key)).map(|v| (key, v.clone()));
    let mut max = default.map_or(Limit::Max, Limit::Bytes);
    if let Some((key, value)) = annotation(MAX) {
        match parse_limit(&value) {
            Err(e) => refused.push(Refusal { key, value, reason: e.to_string() }),
            Ok(wanted) if !trusted && raises(wanted, default) => refused.push(Refusal {
                key,
                value,
                reason: format!(
                    "above the node's default of {} bytes, and namespace {:?} may not raise it",
                    default.unwrap_or_default(),
                    facts.namespace
                ),
            }),
            Ok(wanted) => {
                max = wanted;
                origin = Origin::Annotation;
            }
        }
    }
    // pins.high only raises an alert: any pod may choose its own.
    let mut high = Limit::Max;
    if let Some((key, value)) = annotation(HIGH) {
        match parse_limit(&value) {
            Ok(h) => high = h,
            Err(e) => refused.push(Refusal { key, value, reason: e.to_string() }),
        }
    }
    let mut action = policy.action;
    if let Some((key, value)) = annotation(ACTION) {
        match parse_action(&value) {
            Err(e) => refused.push(Refusal { key, value, reason: e.to_string() }),
            // Over an alert-only default any action is stricter.
            Ok(a) if trusted || a == policy.action || policy.action == Action::Alert => action = a,
            Ok(_) => refused.push(Refusal {
                key,
                value,
                reason: format!(
                    "the node's action is {}, and namespace {:?} may not choose another",
                    policy.action, facts.namespace
                ),
            }),
        }
    }
    let budget = Budget { max, high, action };
    let none = max == Limit::Max && high == Limit::Max;
    Decision { budget: (!none).then_some(budget), origin: if none { Origin::Nothing } else { origin }, refused }
}

/// Whether `wanted` is more than the default allows (no default: anything goes).
fn raises(wanted: Limit, default: Option<u64>) -> bool {
    match (wanted, default) {
        (_, None) => false,
        (Limit::Max, Some(_)) => true,
        (Limit::Bytes(w), Some(d)) => w > d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn policy(pod_default: PodDefault) -> Nri {
        Nri { pod_default, overhead: 256 << 20, raise_namespaces: vec!["trusted".into()], ..Nri::default() }
    }

    fn decide_for(policy: &Nri, ns: &str, annotations: &[(&str, &str)], memory_limit: Option<u64>) -> Decision {
        let a = map(annotations);
        decide(policy, &PodFacts { namespace: ns, labels: None, annotations: Some(&a), memory_limit })
    }

    fn budget(max: Limit, high: Limit, action: Action) -> Option<Budget> {
        Some(Budget { max, high, action })
    }

    #[test]
    fn an_annotation_sets_the_budget_when_the_node_has_none() {
        let d = decide_for(&policy(PodDefault::None), "tenant", &[(MAX, "8Gi"), (HIGH, "6G"), (ACTION, "kill")], None);
        assert_eq!(d.budget, budget(Limit::Bytes(8 * G), Limit::Bytes(6 * G), Action::Kill));
        assert_eq!((d.origin, d.refused.len()), (Origin::Annotation, 0));
        // No annotation, no default: no limit at all.
        let d = decide_for(&policy(PodDefault::None), "tenant", &[], Some(G));
        assert_eq!((d.budget, d.origin), (None, Origin::Nothing));
    }

    #[test]
    fn node_policies() {
        let d = decide_for(&policy(PodDefault::Bytes(4 * G)), "tenant", &[], Some(G));
        assert_eq!((d.budget, d.origin), (budget(Limit::Bytes(4 * G), Limit::Max, Action::Alert), Origin::NodeDefault));
        let d = decide_for(&policy(PodDefault::MemoryLimit), "tenant", &[], Some(G));
        assert_eq!(d.budget.unwrap().max, Limit::Bytes(G + (256 << 20)));
        assert_eq!(d.origin, Origin::MemoryLimit);
        // memory-limit for a pod without one: no budget.
        assert_eq!(decide_for(&policy(PodDefault::MemoryLimit), "tenant", &[], None).budget, None);
    }

    #[test]
    fn a_tenant_may_lower_but_not_raise() {
        let p = policy(PodDefault::Bytes(4 * G));
        let d = decide_for(&p, "tenant", &[(MAX, "2G")], None);
        assert_eq!((d.budget.unwrap().max, d.origin), (Limit::Bytes(2 * G), Origin::Annotation));
        for value in ["5G", "max"] {
            let d = decide_for(&p, "tenant", &[(MAX, value)], None);
            assert_eq!(d.budget.unwrap().max, Limit::Bytes(4 * G), "{value}");
            assert_eq!(d.origin, Origin::NodeDefault);
            assert_eq!(
                d.refused,
                [Refusal {
                    key: MAX,
                    value: value.into(),
                    reason: "above the node's default of 4294967296 bytes, and namespace \"tenant\" may not raise it"
                        .into()
                }]
            );
        }
        // A namespace the node trusts may raise.
        let d = decide_for(&p, "trusted", &[(MAX, "16G")], None);
        assert_eq!((d.budget.unwrap().max, d.refused.len()), (Limit::Bytes(16 * G), 0));
        assert_eq!(decide_for(&p, "tenant", &[(MAX, "3072Mi")], None).budget.unwrap().max, Limit::Bytes(3 * G));
        // Garbage is refused, not taken for "no limit".
        let d = decide_for(&p, "tenant", &[(MAX, "-1")], None);
        assert_eq!((d.budget.unwrap().max, d.refused.len()), (Limit::Bytes(4 * G), 1));
    }

    #[test]
    fn a_tenant_cannot_soften_the_node_action() {
        let p = Nri { action: Action::Kill, ..policy(PodDefault::Bytes(G)) };
        let d = decide_for(&p, "tenant", &[(ACTION, "alert")], None);
        assert_eq!((d.budget.unwrap().action, d.refused.len()), (Action::Kill, 1));
        assert_eq!(d.refused[0].reason, "the node's action is kill, and namespace \"tenant\" may not choose another");
        assert_eq!(decide_for(&p, "trusted", &[(ACTION, "alert")], None).budget.unwrap().action, Action::Alert);
        // Over an alert-only node default a pod may ask for more.
        let d = decide_for(&policy(PodDefault::Bytes(G)), "tenant", &[(ACTION, "freeze")], None);
        assert_eq!((d.budget.unwrap().action, d.refused.len()), (Action::Freeze, 0));
    }

    #[test]
    fn kubevirt_vm_memory_when_the_node_has_no_default() {
        let labels = map(&[("kubevirt.io", "virt-launcher"), ("vm.kubevirt.io/name", "vm-a")]);
        let annotations = map(&[("kubevirt.io/domain", "vmi-a")]);
        let facts = PodFacts {
            namespace: "vms",
            labels: Some(&labels),
            annotations: Some(&annotations),
            memory_limit: Some(2 * G),
        };
        assert_eq!(kubevirt_vm(&facts).as_deref(), Some("vmi-a"));
        let d = decide(&policy(PodDefault::None), &facts);
        assert_eq!((d.budget.unwrap().max, d.origin), (Limit::Bytes(2 * G + (256 << 20)), Origin::KubevirtVm));
        // The node's fixed default comes first.
        assert_eq!(decide(&policy(PodDefault::Bytes(G)), &facts).origin, Origin::NodeDefault);
        let plain = PodFacts { labels: None, ..facts.clone() };
        assert_eq!(kubevirt_vm(&plain), None);
        assert_eq!(decide(&policy(PodDefault::None), &plain).budget, None);
    }
}
