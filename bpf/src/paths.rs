//! Where pincg pins its BPF maps and links in the BPF filesystem.

use std::path::{Path, PathBuf};

/// The default pin root.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/pincg";

/// The maps shared by every pincg BPF object (the ledger).
pub const SHARED_MAPS: [&str; 3] = ["objects", "usage", "counters"];

/// Pin locations under one root: `maps/<map>` and `links/<program>`.
#[derive(Debug, Clone)]
pub struct PinPaths {
    root: PathBuf,
}

impl PinPaths {
    pub fn new(root: impl Into<PathBuf>) -> PinPaths {
        PinPaths { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
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
}

impl Default for PinPaths {
    fn default() -> PinPaths {
        PinPaths::new(DEFAULT_PIN_ROOT)
    }
}
