//! Where pincg pins its BPF maps and links in the BPF filesystem.

use std::path::{Path, PathBuf};

/// The default pin root.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/pincg";

/// The maps shared by every pincg BPF object: the ledger, the limits and
/// the enforcement settings.
pub const SHARED_MAPS: [&str; 8] =
    ["objects", "usage", "spans", "counters", "limits", "settings", "actions", "requests"];

/// Pin locations under one root (`maps/<map>`, `links/<program>`, and
/// `builds/<object>@<hash>`: which build of each object the links run), and
/// the cgroup v2 root that cgroup programs attach to.
#[derive(Debug, Clone)]
pub struct PinPaths {
    root: PathBuf,
    cgroup_root: PathBuf,
}

impl PinPaths {
    pub fn new(root: impl Into<PathBuf>, cgroup_root: impl Into<PathBuf>) -> PinPaths {
        PinPaths { root: root.into(), cgroup_root: cgroup_root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn link(&self, program: &str) -> PathBuf {
        self.links_dir().join(program)
    }

    pub fn builds_dir(&self) -> PathBuf {
        self.root.join("builds")
    }

    /// The record that the links of `object` run the build whose object
    /// hashes to `hash`.
    pub fn build(&self, object: &str, hash: u64) -> PathBuf {
        self.builds_dir().join(format!("{object}@{hash:016x}"))
    }
}
