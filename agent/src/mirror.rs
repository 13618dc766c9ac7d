//! The mirror tree: one directory per cgroup under the mirror root (by
//! default `/run/pincg/cgroup`), holding the `pins.*` interface files.
//!
//! Files are replaced atomically (write a temporary file, rename) and only
//! when their content changes, so readers never see a partial value.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use pincg_cgroup_spec::{render_current, render_stat, InterfaceFile};

use crate::snapshot::CgroupRow;

/// The default mirror root.
pub const DEFAULT_ROOT: &str = "/run/pincg/cgroup";

#[derive(Debug, thiserror::Error)]
#[error("mirror file {path}: {source}")]
pub struct MirrorError {
    path: PathBuf,
    source: std::io::Error,
}

/// Writes the mirror tree and remembers what it wrote.
pub struct Mirror {
    root: PathBuf,
    written: HashMap<PathBuf, String>,
    dirs: HashSet<String>,
}

impl Mirror {
    pub fn new(root: impl Into<PathBuf>) -> Mirror {
        Mirror { root: root.into(), written: HashMap::new(), dirs: HashSet::new() }
    }

    /// Bring the tree in line with `rows`: write every existing cgroup's
    /// files, remove the directories of cgroups that went away.
    pub fn update(&mut self, rows: &[CgroupRow]) -> Result<(), MirrorError> {
        let mut live = HashSet::new();
        for row in rows {
            let Some(rel) = &row.path else { continue };
            let dir = self.root.join(rel);
            self.write(&dir.join(InterfaceFile::Current.name()), render_current(row.current()))?;
            self.write(&dir.join(InterfaceFile::Stat.name()), render_stat(&row.total))?;
            live.insert(rel.clone());
        }
        let mut gone: Vec<String> = self.dirs.difference(&live).cloned().collect();
        // Deepest first, so children go before their parents.
        gone.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
        for rel in gone {
            self.remove_dir(&rel)?;
        }
        self.dirs = live;
        Ok(())
    }

    fn write(&mut self, path: &Path, content: String) -> Result<(), MirrorError> {
        if self.written.get(path) == Some(&content) {
            return Ok(());
        }
        let err = |source| MirrorError { path: path.to_path_buf(), source };
        let dir = path.parent().expect("mirror files live in a directory");
        fs::create_dir_all(dir).map_err(err)?;
        let name = path.file_name().expect("mirror files have names").to_string_lossy();
        let tmp = dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, &content).map_err(err)?;
        fs::rename(&tmp, path).map_err(err)?;
        self.written.insert(path.to_path_buf(), content);
        Ok(())
    }

    /// Remove a vanished cgroup's own files and, once empty, its directory.
    fn remove_dir(&mut self, rel: &str) -> Result<(), MirrorError> {
        let dir = self.root.join(rel);
        for file in [InterfaceFile::Current, InterfaceFile::Stat] {
            let path = dir.join(file.name());
            self.written.remove(&path);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(MirrorError { path, source: e });
                }
                _ => {}
            }
        }
        match fs::remove_dir(&dir) {
            Err(e) if e.kind() != ErrorKind::NotFound && e.kind() != ErrorKind::DirectoryNotEmpty => {
                Err(MirrorError { path: dir, source: e })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use pincg_cgroup_spec::PerSource;

    use super::*;

    fn row(id: u64, path: &str, io_uring: u64) -> CgroupRow {
        let total = PerSource([0, 0, 0, io_uring, 0, 0]);
        CgroupRow { id, path: Some(path.into()), total, local: total }
    }

    #[test]
    fn writes_files_and_removes_vanished_cgroups() {
        let root = std::env::temp_dir().join(format!("pincg-mirror-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let mut mirror = Mirror::new(&root);
        mirror
            .update(&[row(1, "", 67108864), row(2, "a", 67108864), row(3, "a/b", 67108864)])
            .unwrap();
        assert_eq!(fs::read_to_string(root.join("a/b/pins.current")).unwrap(), "67108864\n");
        assert_eq!(fs::read_to_string(root.join("pins.current")).unwrap(), "67108864\n");
        assert!(fs::read_to_string(root.join("a/pins.stat")).unwrap().contains("io_uring 67108864\n"));

        mirror.update(&[row(1, "", 0), row(2, "a", 0)]).unwrap();
        assert!(!root.join("a/b").exists());
        assert_eq!(fs::read_to_string(root.join("a/pins.current")).unwrap(), "0\n");
        fs::remove_dir_all(root).unwrap();
    }
}
