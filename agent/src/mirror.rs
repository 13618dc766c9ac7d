//! The mirror tree: one directory per cgroup under the mirror root (by
//! default `/run/pincg/cgroup`), holding the `pins.*` interface files.
//!
//! Read-only files are replaced atomically (write a temporary file, rename)
//! and only when their content changes, so readers never see a partial
//! value. The writable files (`pins.max`, `pins.high`, `pins.max.action`)
//! are created once with their defaults and then belong to whoever may set
//! the cgroup's limits: they get the owner of the cgroup's own
//! `cgroup.controllers`, which is root for a delegation root and the
//! delegatee for cgroups it created. A delegatee can therefore write the
//! limits of its sub-cgroups but not of the delegated cgroup itself, and
//! since every ancestor's `pins.max` binds, never raise its effective limit.
//!
//! A directory is removed when the cgroup it mirrored goes away. One an
//! orchestrator created ahead of its cgroup is left alone until then.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use pincg_cgroup_spec::{render_current, render_events, render_stat, InterfaceFile};

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
    cgroup_root: PathBuf,
    written: HashMap<PathBuf, String>,
    dirs: HashSet<String>,
}

impl Mirror {
    pub fn new(root: impl Into<PathBuf>, cgroup_root: impl Into<PathBuf>) -> Mirror {
        Mirror { root: root.into(), cgroup_root: cgroup_root.into(), written: HashMap::new(), dirs: HashSet::new() }
    }

    /// The mirror directory of a cgroup (relative path; "" is the root).
    pub fn dir(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Bring the tree in line with `rows`: write every existing cgroup's
    /// files, remove the directories of cgroups that went away.
    pub fn update(&mut self, rows: &[CgroupRow]) -> Result<(), MirrorError> {
        let mut live = HashSet::new();
        for row in rows {
            let Some(rel) = &row.path else { continue };
            let dir = self.dir(rel);
            // The read-only files first: once pins.max appears in a new
            // directory (what orchestrators wait for), every file is there.
            for file in InterfaceFile::READ_ONLY {
                self.write(&dir.join(file.name()), render(file, row))?;
            }
            if !self.dirs.contains(rel) {
                self.create_writable(&dir, rel)?;
            }
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

    /// Create the orchestrator-written files that do not exist yet, owned
    /// by whoever may set this cgroup's limits.
    fn create_writable(&self, dir: &Path, rel: &str) -> Result<(), MirrorError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| MirrorError { path, source }
        };
        let owner = fs::metadata(self.cgroup_root.join(rel).join("cgroup.controllers")).ok();
        for (file, default) in InterfaceFile::WRITABLE {
            let path = dir.join(file.name());
            if fs::symlink_metadata(&path).is_ok() {
                continue;
            }
            replace_file(&path, default).map_err(err(&path))?;
            if let Some(meta) = &owner {
                std::os::unix::fs::chown(&path, Some(meta.uid()), Some(meta.gid())).map_err(err(&path))?;
            }
        }
        Ok(())
    }

    fn write(&mut self, path: &Path, content: String) -> Result<(), MirrorError> {
        if self.written.get(path) == Some(&content) {
            return Ok(());
        }
        replace_file(path, &content).map_err(|source| MirrorError { path: path.to_path_buf(), source })?;
        self.written.insert(path.to_path_buf(), content);
        Ok(())
    }

    /// Remove a vanished cgroup's files and, once empty, its directory.
    fn remove_dir(&mut self, rel: &str) -> Result<(), MirrorError> {
        let dir = self.dir(rel);
        let files = InterfaceFile::READ_ONLY.into_iter().chain(InterfaceFile::WRITABLE.map(|(f, _)| f));
        for file in files {
            let path = dir.join(file.name());
            self.written.remove(&path);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != ErrorKind::NotFound => return Err(MirrorError { path, source: e }),
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

fn render(file: InterfaceFile, row: &CgroupRow) -> String {
    match file {
        InterfaceFile::Current => render_current(row.current()),
        InterfaceFile::Peak => render_current(row.peak),
        InterfaceFile::Events => render_events(&row.events),
        InterfaceFile::EventsLocal => render_events(&row.events_local),
        InterfaceFile::Stat => render_stat(&row.total, row.double_pinned()),
        InterfaceFile::Max | InterfaceFile::High | InterfaceFile::MaxAction => {
            unreachable!("{} is written by orchestrators", file.name())
        }
    }
}

/// Replace `path` atomically with `content` (write beside it, rename).
pub fn replace_file(path: &Path, content: &str) -> std::io::Result<()> {
    let dir = path.parent().expect("mirror files live in a directory");
    fs::create_dir_all(dir)?;
    let name = path.file_name().expect("mirror files have names").to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, content)?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use pincg_cgroup_spec::{Events, Source};

    use super::*;

    fn row(id: u64, path: &str, io_uring: u64) -> CgroupRow {
        CgroupRow { id, events: Events { high: 1, max: 2 }, ..CgroupRow::sample(path, Source::IoUring, io_uring) }
    }

    #[test]
    fn writes_files_and_removes_vanished_cgroups() {
        let root = std::env::temp_dir().join(format!("pincg-mirror-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let mut mirror = Mirror::new(&root, "/nonexistent");
        mirror
            .update(&[row(1, "", 67108864), row(2, "a", 67108864), row(3, "a/b", 67108864)])
            .unwrap();
        assert_eq!(fs::read_to_string(root.join("a/b/pins.current")).unwrap(), "67108864\n");
        assert_eq!(fs::read_to_string(root.join("a/b/pins.peak")).unwrap(), "67108864\n");
        assert_eq!(fs::read_to_string(root.join("a/b/pins.events")).unwrap(), "high 1\nmax 2\n");
        assert_eq!(fs::read_to_string(root.join("a/b/pins.events.local")).unwrap(), "high 0\nmax 0\n");
        assert_eq!(fs::read_to_string(root.join("a/b/pins.max")).unwrap(), "max\n");
        assert_eq!(fs::read_to_string(root.join("a/b/pins.max.action")).unwrap(), "alert\n");
        assert_eq!(fs::read_to_string(root.join("pins.current")).unwrap(), "67108864\n");
        assert!(fs::read_to_string(root.join("a/pins.stat")).unwrap().contains("io_uring 67108864\n"));

        // An orchestrator's limit survives agent updates.
        fs::write(root.join("a/pins.max"), "1G\n").unwrap();
        // A directory made ahead of its cgroup is left alone.
        fs::create_dir_all(root.join("future")).unwrap();
        fs::write(root.join("future/pins.max"), "1G\n").unwrap();
        mirror.update(&[row(1, "", 0), row(2, "a", 0)]).unwrap();
        assert!(!root.join("a/b").exists());
        assert_eq!(fs::read_to_string(root.join("a/pins.current")).unwrap(), "0\n");
        assert_eq!(fs::read_to_string(root.join("a/pins.max")).unwrap(), "1G\n");
        assert_eq!(fs::read_to_string(root.join("future/pins.max")).unwrap(), "1G\n");
        fs::remove_dir_all(root).unwrap();
    }
}
