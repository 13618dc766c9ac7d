//! `pincg probe`: what this kernel offers, without loading anything: the
//! program variant per hook, and the enforcement each source gets.

use pincg_bpf::loader::{HookState, HookStatus};
use pincg_bpf::preflight::Policy;
use pincg_cgroup_spec::Source;
use serde_json::json;

/// How a source's budget is enforced on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    /// Refused in BPF before any page is pinned.
    Refuse,
    /// Counted when pinned; the cgroup's pins.max.action applies after.
    ActAfter,
    /// Not counted on this kernel (or its module is not loaded yet).
    None,
}

impl Enforcement {
    /// The word `pincg probe` and the metrics use.
    pub fn word(self) -> &'static str {
        match self {
            Enforcement::Refuse => "refuse",
            Enforcement::ActAfter => "act after",
            Enforcement::None => "none",
        }
    }
}

/// The enforcement of `source` given the hooks' states.
pub fn enforcement(hooks: &[HookStatus], source: Source) -> Enforcement {
    let of_source = || hooks.iter().filter(move |h| h.source == source);
    let usable = |h: &HookStatus| h.is_live();
    let mut counting = of_source().filter(|h| !h.hook.ends_with(":refuse")).peekable();
    let counted = counting.peek().is_some() && counting.all(usable);
    let refused = of_source().any(|h| h.hook.ends_with(":refuse") && usable(h));
    match (counted, refused) {
        (false, _) => Enforcement::None,
        (true, true) => Enforcement::Refuse,
        (true, false) => Enforcement::ActAfter,
    }
}

/// Why `source` gets less than `refuse`: the first hook that keeps it from
/// counting, or else from refusing, in that hook's words.
pub fn reason(hooks: &[HookStatus], source: Source) -> Option<String> {
    let of_source = || hooks.iter().filter(move |h| h.source == source);
    let usable = |h: &&HookStatus| h.state == HookState::Attached || h.state == HookState::Adopted;
    let blocking = match enforcement(hooks, source) {
        Enforcement::Refuse => return None,
        Enforcement::None => of_source().find(|h| !h.hook.ends_with(":refuse") && !usable(h)),
        Enforcement::ActAfter => of_source().find(|h| h.hook.ends_with(":refuse") && !usable(h)),
    };
    Some(match blocking {
        Some(h) => format!("{} {}", h.hook, h.describe()),
        None if enforcement(hooks, source) == Enforcement::None => "no hooks on this kernel".into(),
        None => "no refusal point".into(),
    })
}

pub fn render_text(policy: &Policy, hooks: &[HookStatus]) -> String {
    let mut out = String::from("KERNEL POLICY\n");
    for (check, state) in policy.lines() {
        out.push_str(&format!("{check:<10} {state}\n"));
    }
    out.push_str("\nHOOK               PROGRAM OR STATE\n");
    for h in hooks {
        let what = match &h.state {
            HookState::Attached => h.program.unwrap_or("-").to_string(),
            _ => h.describe(),
        };
        out.push_str(&format!("{:<18} {what}\n", h.hook));
        if let Some(change) = h.change {
            out.push_str(&format!("{:<18} variant for {change}\n", ""));
        }
    }
    out.push_str("\nSOURCE     ENFORCEMENT\n");
    // The reason goes on a line of its own, so the enforcement line reads
    // the same on every kernel that gives the source that enforcement.
    for source in Source::ALL {
        out.push_str(&format!("{:<10} {}\n", source.key(), enforcement(hooks, source).word()));
        if let Some(why) = reason(hooks, source) {
            out.push_str(&format!("{:<10} because {why}\n", ""));
        }
    }
    out
}

pub fn render_json(policy: &Policy, hooks: &[HookStatus]) -> serde_json::Value {
    let enforcement: serde_json::Map<_, _> =
        Source::ALL.iter().map(|s| (s.key().to_string(), json!(enforcement(hooks, *s).word()))).collect();
    let reasons: serde_json::Map<_, _> =
        Source::ALL.iter().filter_map(|s| Some((s.key().to_string(), json!(reason(hooks, *s)?)))).collect();
    json!({"hooks": hooks.iter().map(HookStatus::to_json).collect::<Vec<_>>(), "enforcement": enforcement,
           "enforcement_reasons": reasons, "policy": {"tracing": policy.lines()[0].1, "bpf_lsm": policy.lines()[1].1}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(hook: &'static str, source: Source, state: HookState) -> HookStatus {
        HookStatus { hook, source, program: Some("p"), change: None, state }
    }

    #[test]
    fn refuse_needs_both_counting_and_a_refusal_point() {
        let hooks = [
            hook("vfio:pin", Source::Vfio, HookState::Attached),
            hook("vfio:release", Source::Vfio, HookState::Attached),
            hook("vfio:refuse", Source::Vfio, HookState::Attached),
            hook("io_uring:register", Source::IoUring, HookState::Attached),
            hook("io_uring:release", Source::IoUring, HookState::Attached),
            hook("rdma:register", Source::Rdma, HookState::WaitingForModule("ib_uverbs")),
            hook("rdma:refuse", Source::Rdma, HookState::Attached),
        ];
        assert_eq!(enforcement(&hooks, Source::Vfio), Enforcement::Refuse);
        let mut changed = hooks.to_vec();
        changed[3].change = Some("6.13-7.1: io_sqe_buffer_register(ctx, iov, last_hpage) returns the node");
        let text = render_text(&Policy::default(), &changed);
        assert!(
            text.contains("io_uring:register  p\n                   variant for 6.13-7.1: io_sqe_buffer_register"),
            "{text}"
        );
        assert_eq!(enforcement(&hooks, Source::IoUring), Enforcement::ActAfter);
        assert_eq!(enforcement(&hooks, Source::Rdma), Enforcement::None);
        assert_eq!(enforcement(&hooks, Source::Iommufd), Enforcement::None, "no hooks at all");
        let text = render_text(&Policy::default(), &hooks);
        assert!(text.starts_with("KERNEL POLICY\ntracing    allowed\nbpf lsm    active\n\nHOOK"), "{text}");
        assert!(text.contains("io_uring   act after\n           because no refusal point\n"), "{text}");
        assert!(
            text.contains("rdma       none\n           because rdma:register waiting for module ib_uverbs\n"),
            "{text}"
        );
        assert!(
            text.contains("vfio       refuse\niommufd    none\n           because no hooks on this kernel\n"),
            "{text}"
        );
    }
}
