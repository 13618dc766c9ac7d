//! The enforcement mode (SPEC.md, "Modes").

use std::fmt;

/// `monitor` never refuses and never acts; `enforce` refuses and acts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Never refuse; count what would have been refused.
    #[default]
    Monitor,
    Enforce,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "monitor" => Ok(Mode::Monitor),
            "enforce" => Ok(Mode::Enforce),
            other => Err(format!("{other:?} is not a mode (monitor or enforce)")),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Monitor => "monitor",
            Mode::Enforce => "enforce",
        })
    }
}
