//! `pins.max.action`: what happens when a pin takes a cgroup over
//! `pins.max` and no refusal point could stop it (io_uring on kernels
//! without one, or a request that changed between check and pin).

use std::fmt;

/// The action, as in `enum pincg_action` of `bpf/include/pincg.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u32)]
pub enum Action {
    /// Count the event (`pins.events` `max`), log and expose it; nothing else.
    #[default]
    Alert = 0,
    /// SIGKILL the pinning task, synchronously, from BPF.
    Kill = 1,
    /// Freeze the cgroup (`cgroup.freeze`), from the agent.
    Freeze = 2,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Alert => "alert",
            Action::Kill => "kill",
            Action::Freeze => "freeze",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an action (write alert, kill or freeze)")]
pub struct ActionError(pub String);

/// Parse `alert`, `kill` or `freeze` (surrounding whitespace allowed).
pub fn parse_action(text: &str) -> Result<Action, ActionError> {
    match text.trim() {
        "alert" => Ok(Action::Alert),
        "kill" => Ok(Action::Kill),
        "freeze" => Ok(Action::Freeze),
        other => Err(ActionError(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for a in [Action::Alert, Action::Kill, Action::Freeze] {
            assert_eq!(parse_action(&format!("{a}\n")), Ok(a));
        }
        assert_eq!(parse_action("KILL"), Err(ActionError("KILL".into())));
    }
}
