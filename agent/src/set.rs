//! `pincg set <cgroup> max|high|action <value>`: write the mirror file an
//! orchestrator would write, then wait until the BPF programs enforce it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pincg_bpf::ledger::{CgroupLimit, Ledger};
use pincg_bpf::paths::PinPaths;
use pincg_cgroup_spec::{parse_action, parse_limit, InterfaceFile};

use crate::mirror::replace_file;

/// How long `set` waits for the agent to put a value in force.
const IN_FORCE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Key {
    Max,
    High,
    Action,
}

impl Key {
    fn file(self) -> InterfaceFile {
        match self {
            Key::Max => InterfaceFile::Max,
            Key::High => InterfaceFile::High,
            Key::Action => InterfaceFile::MaxAction,
        }
    }
}

/// What `set` did.
pub struct Outcome {
    pub file: PathBuf,
    pub value: String,
    /// How long the agent took to put it in force; `None` if the cgroup
    /// does not exist yet.
    pub in_force_after: Option<Duration>,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.in_force_after {
            Some(t) => write!(f, "{}: {}, in force after {} ms", self.file.display(), self.value, t.as_millis()),
            None => write!(
                f,
                "{}: {}; the cgroup does not exist yet, the limit applies when it appears",
                self.file.display(),
                self.value
            ),
        }
    }
}

impl Outcome {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"file": self.file, "value": self.value,
                           "in_force_after_ms": self.in_force_after.map(|t| t.as_millis() as u64)})
    }
}

/// Validate, write, wait until the kernel enforces it.
pub fn run(pins: &PinPaths, mirror_root: &Path, cgroup: &str, key: Key, value: &str) -> anyhow::Result<Outcome> {
    let rel = cgroup.trim_matches('/');
    // Refuse bad values here, with the reason, rather than in the agent's log.
    let canonical = match key {
        Key::Action => parse_action(value)?.to_string(),
        Key::Max | Key::High => parse_limit(value)?.to_string(),
    };
    let file = mirror_root.join(rel).join(key.file().name());
    replace_file(&file, &format!("{canonical}\n")).with_context(|| format!("writing {}", file.display()))?;
    let cgroup_dir = pins.cgroup_root().join(rel);
    let Ok(meta) = std::fs::metadata(&cgroup_dir) else {
        return Ok(Outcome { file, value: canonical, in_force_after: None });
    };
    let ledger = Ledger::open(pins)?;
    let started = Instant::now();
    loop {
        if in_force(ledger.limits()?.get(&meta.ino()), key, &canonical) {
            return Ok(Outcome { file, value: canonical, in_force_after: Some(started.elapsed()) });
        }
        if started.elapsed() > IN_FORCE_TIMEOUT {
            bail!(
                "wrote {}, but it is not in force after {IN_FORCE_TIMEOUT:?}: is `pincg agent` running with mirror root {}?",
                file.display(),
                mirror_root.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether the limit entry of the cgroup (if any) shows `canonical` for
/// `key`. With no entry, every value is at its default (`max`, `alert`).
fn in_force(limit: Option<&CgroupLimit>, key: Key, canonical: &str) -> bool {
    match (limit, key) {
        (Some(l), Key::Max) => l.max.to_string() == canonical,
        (Some(l), Key::High) => l.high.to_string() == canonical,
        (Some(l), Key::Action) => l.action.to_string() == canonical,
        (None, Key::Max | Key::High) => canonical == "max",
        (None, Key::Action) => canonical == "alert",
    }
}
