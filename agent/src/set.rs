//! `pincg set <cgroup> max|high|action <value>`: write the mirror file an
//! orchestrator would write, then wait until the agent has put it in force.
//!
//! The value is written without its trailing newline: the agent answers by
//! rewriting it in canonical form once it is in force, which any writer
//! that may write the file can see. Root writes the file atomically (and
//! also checks the BPF limits map); a delegatee, who cannot create files in
//! the root-owned mirror directories nor open BPF maps, writes its own file
//! in place and waits for the rewrite.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pincg_bpf::ledger::{CgroupLimit, Ledger};
use pincg_bpf::paths::PinPaths;
use pincg_cgroup_spec::{parse_action, parse_limit, InterfaceFile};

use crate::mirror::{open_dir, owner_at, replace_at, Owner};

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

/// Validate, write, wait until the agent has put it in force.
pub fn run(pins: &PinPaths, mirror_root: &Path, cgroup: &str, key: Key, value: &str) -> anyhow::Result<Outcome> {
    let rel = cgroup.trim_matches('/');
    // Refuse bad values here, with the reason, rather than in the agent's log.
    let canonical = match key {
        Key::Action => parse_action(value)?.to_string(),
        Key::Max | Key::High => parse_limit(value)?.to_string(),
    };
    let name = key.file().name();
    let file = mirror_root.join(rel).join(name);
    write_request(mirror_root, rel, name, &canonical).with_context(|| format!("writing {}", file.display()))?;
    let cgroup_dir = pins.cgroup_root().join(rel);
    let Ok(meta) = std::fs::metadata(&cgroup_dir) else {
        return Ok(Outcome { file, value: canonical, in_force_after: None });
    };
    // Only root can read the limits map; the rewrite is enough for others.
    let ledger = if is_root() { Some(Ledger::open(pins)?) } else { None };
    let answer = format!("{canonical}\n");
    let started = Instant::now();
    loop {
        let rewritten = std::fs::read_to_string(&file).is_ok_and(|text| text == answer);
        let enforced = match &ledger {
            Some(ledger) => in_force(ledger.limits()?.get(&meta.ino()), key, &canonical),
            None => true,
        };
        if rewritten && enforced {
            return Ok(Outcome { file, value: canonical, in_force_after: Some(started.elapsed()) });
        }
        if started.elapsed() > IN_FORCE_TIMEOUT {
            bail!(
                "wrote {}, but the agent did not confirm it within {IN_FORCE_TIMEOUT:?} (it rewrites the file as \
                 {answer:?} once in force): is `pincg agent` running with mirror root {}? Its log names the file \
                 if it could not take it",
                file.display(),
                mirror_root.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Write `value` (no newline: a request the agent answers) to `name` in the
/// mirror directory `rel`, never through a symlink.
fn write_request(mirror_root: &Path, rel: &str, name: &str, value: &str) -> std::io::Result<()> {
    if is_root() {
        let dir = open_dir(mirror_root, rel, true)?;
        let owner = owner_at(&dir, name)?.map_or(Owner::Writer, |(uid, gid)| Owner::Of(uid, gid));
        return replace_at(&dir, name, value, owner);
    }
    let dir = open_dir(mirror_root, rel, false)?;
    let c = std::ffi::CString::new(name).expect("interface file names have no NUL");
    let flags = libc::O_WRONLY | libc::O_TRUNC | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a valid directory fd and a NUL-terminated name; no O_CREAT.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.kind() {
            std::io::ErrorKind::NotFound => std::io::Error::new(
                e.kind(),
                "no such file: the agent creates it when the cgroup exists, and only root can create it ahead",
            ),
            _ => e,
        });
    }
    // SAFETY: a new fd we own.
    std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }).write_all(value.as_bytes())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
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
