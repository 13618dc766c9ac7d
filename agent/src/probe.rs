//! `pincg probe`: what this kernel offers, without loading anything: the
//! program variant per hook, and the enforcement each source gets.

use pincg_bpf::loader::{HookState, HookStatus};
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
    let usable = |h: &HookStatus| h.state == HookState::Attached || h.state == HookState::Adopted;
    let mut counting = of_source().filter(|h| !h.hook.ends_with(":refuse")).peekable();
    let counted = counting.peek().is_some() && counting.all(usable);
    let refused = of_source().any(|h| h.hook.ends_with(":refuse") && usable(h));
    match (counted, refused) {
        (false, _) => Enforcement::None,
        (true, true) => Enforcement::Refuse,
        (true, false) => Enforcement::ActAfter,
    }
}

pub fn render_text(hooks: &[HookStatus]) -> String {
    let mut out = String::from("HOOK               PROGRAM OR STATE\n");
    for h in hooks {
        let what = match &h.state {
            HookState::Attached => h.program.unwrap_or("-").to_string(),
            _ => h.describe(),
        };
        out.push_str(&format!("{:<18} {what}\n", h.hook));
    }
    out.push_str("\nSOURCE     ENFORCEMENT\n");
    for source in Source::ALL {
        out.push_str(&format!("{:<10} {}\n", source.key(), enforcement(hooks, source).word()));
    }
    out
}

pub fn render_json(hooks: &[HookStatus]) -> serde_json::Value {
    let enforcement: serde_json::Map<_, _> =
        Source::ALL.iter().map(|s| (s.key().to_string(), json!(enforcement(hooks, *s).word()))).collect();
    json!({"hooks": hooks.iter().map(HookStatus::to_json).collect::<Vec<_>>(), "enforcement": enforcement})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(hook: &'static str, source: Source, state: HookState) -> HookStatus {
        HookStatus { hook, source, program: Some("p"), state }
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
        assert_eq!(enforcement(&hooks, Source::IoUring), Enforcement::ActAfter);
        assert_eq!(enforcement(&hooks, Source::Rdma), Enforcement::None);
        assert_eq!(enforcement(&hooks, Source::Iommufd), Enforcement::None, "no hooks at all");
        assert!(render_text(&hooks).contains("io_uring   act after\n"));
    }
}
