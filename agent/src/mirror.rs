//! The mirror tree: one directory per cgroup under the mirror root (by
//! default `/run/pincg/cgroup`), holding the `pins.*` interface files.
//!
//! Read-only files are replaced atomically (write a temporary file, rename)
//! and only when their content changes, so readers never see a partial
//! value. The writable files (`pins.max`, `pins.high`, `pins.max.action`)
//! are created once, with the limit in force (the default when there is
//! none), and then belong to whoever may set the cgroup's limits: they get
//! the owner of the cgroup's own `cgroup.controllers`, which is root for a
//! delegation root and the delegatee for cgroups it created. A delegatee can
//! therefore write the limits of its sub-cgroups but not of the delegated
//! cgroup itself, and since every ancestor's `pins.max` binds, never raise
//! its effective limit. Directories are always root's, so no delegatee can
//! swap a file for a symlink; every file is created and replaced through a
//! directory descriptor opened component by component without following
//! links (a cgroup name is the delegatee's to choose).
//!
//! A directory is removed when the cgroup it mirrored goes away, and only
//! after a complete scan of the cgroup tree. One an orchestrator created
//! ahead of its cgroup is left alone until then.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use pincg_bpf::ledger::CgroupLimit;
use pincg_cgroup_spec::{render_current, render_events, render_stat, InterfaceFile};

use crate::snapshot::CgroupRow;

/// The default mirror root.
pub const DEFAULT_ROOT: &str = "/run/pincg/cgroup";

#[derive(Debug, thiserror::Error)]
#[error("mirror file {path}")]
pub struct MirrorError {
    path: PathBuf,
    source: std::io::Error,
}

/// Who a new or replaced file belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The writer (root, for the agent).
    Writer,
    /// This uid and gid.
    Of(u32, u32),
}

/// Writes the mirror tree and remembers what it wrote.
pub struct Mirror {
    root: PathBuf,
    cgroup_root: PathBuf,
    written: HashMap<PathBuf, String>,
    dirs: HashSet<String>,
    /// Problems already logged, by path: each is logged once.
    reported: HashMap<PathBuf, String>,
    /// Limit files that could not be handed to their delegatee and
    /// directories that could not be written, since start (counted with the
    /// bad limit files in `pincg_limit_errors_total`).
    pub errors: u64,
}

impl Mirror {
    pub fn new(root: impl Into<PathBuf>, cgroup_root: impl Into<PathBuf>) -> Mirror {
        Mirror {
            root: root.into(),
            cgroup_root: cgroup_root.into(),
            written: HashMap::new(),
            dirs: HashSet::new(),
            reported: HashMap::new(),
            errors: 0,
        }
    }

    /// The mirror root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The mirror directory of a cgroup (relative path; "" is the root).
    pub fn dir(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Bring the tree in line with `rows`: write every existing cgroup's
    /// files, new limit files with `seed`'s limit; after a `complete` scan,
    /// remove the directories of cgroups that went away.
    pub fn update(&mut self, rows: &[CgroupRow], complete: bool, seed: impl Fn(&CgroupRow) -> CgroupLimit) {
        let mut live = HashSet::new();
        for row in rows {
            let Some(rel) = &row.path else { continue };
            let existing = self.dirs.contains(rel);
            match self.write_row(row, rel, !existing, &seed) {
                Ok(()) if self.reported.is_empty() => {}
                Ok(()) => {
                    let dir = self.dir(rel);
                    // This directory's problems, not its descendants'.
                    self.reported.retain(|path, _| *path != dir && path.parent() != Some(dir.as_path()));
                }
                // One bad directory (a link where a directory should be)
                // never stops the others; a new one is tried again next round.
                Err(e) => {
                    self.report(&e);
                    if !existing {
                        continue;
                    }
                }
            }
            live.insert(rel.clone());
        }
        if !complete {
            // Cgroups below an unreadable directory are not gone.
            self.dirs.extend(live);
            return;
        }
        let mut gone: Vec<String> = self.dirs.difference(&live).cloned().collect();
        // Deepest first, so children go before their parents.
        gone.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
        for rel in gone {
            // What cannot be removed (something mounted or put there) is
            // reported once and tried again; it never fails the round.
            if let Err(e) = self.remove_dir(&rel) {
                self.report(&e);
                live.insert(rel);
            }
        }
        self.dirs = live;
    }

    /// Log and count a problem once, until it changes.
    fn report(&mut self, e: &MirrorError) {
        if self.reported.get(&e.path) != Some(&e.source.to_string()) {
            self.errors += 1;
            tracing::warn!("{}", crate::logging::chain(e));
            self.reported.insert(e.path.clone(), e.source.to_string());
        }
    }

    /// Write the read-only files of `row` that changed and, for a `new`
    /// directory, the limit files.
    fn write_row(
        &mut self,
        row: &CgroupRow,
        rel: &str,
        new: bool,
        seed: &impl Fn(&CgroupRow) -> CgroupLimit,
    ) -> Result<(), MirrorError> {
        let changed: Vec<(InterfaceFile, String)> = InterfaceFile::READ_ONLY
            .into_iter()
            .map(|file| (file, render(file, row)))
            .filter(|(file, content)| self.written.get(&self.dir(rel).join(file.name())) != Some(content))
            .collect();
        if changed.is_empty() && !new {
            return Ok(());
        }
        let dir = open_dir(&self.root, rel, true).map_err(|source| MirrorError { path: self.dir(rel), source })?;
        // The read-only files first: once pins.max appears in a new
        // directory (what orchestrators wait for), every file is there.
        for (file, content) in changed {
            let path = self.dir(rel).join(file.name());
            replace_at(&dir, file.name(), &content, Owner::Writer)
                .map_err(|source| MirrorError { path: path.clone(), source })?;
            self.written.insert(path, content);
        }
        if new {
            self.create_writable(&dir, rel, &seed(row))?;
        }
        Ok(())
    }

    /// Create the orchestrator-written files that do not exist yet, with
    /// the limit in force, owned by whoever may set this cgroup's limits. A
    /// file that cannot be handed over is created root's, logged and
    /// counted: the cgroup is then limited by root only.
    fn create_writable(&mut self, dir: &OwnedFd, rel: &str, seed: &CgroupLimit) -> Result<(), MirrorError> {
        let owner = fs::metadata(self.cgroup_root.join(rel).join("cgroup.controllers"))
            .ok()
            .map_or(Owner::Writer, |meta| Owner::Of(meta.uid(), meta.gid()));
        for (file, _) in InterfaceFile::WRITABLE {
            let path = self.dir(rel).join(file.name());
            let err = |source| MirrorError { path: path.clone(), source };
            let content = format!("{}\n", seeded(file, seed));
            match create_at(dir, file.name(), &content, owner) {
                Err(e) if owner != Owner::Writer && e.raw_os_error() == Some(libc::EPERM) => {
                    self.errors += 1;
                    tracing::warn!(
                        "{}: cannot hand it to its delegatee ({e}; the agent needs CAP_CHOWN): \
                         created root's, so only root sets this cgroup's limits",
                        path.display()
                    );
                    create_at(dir, file.name(), &content, Owner::Writer).map_err(err)?;
                }
                other => {
                    other.map_err(err)?;
                }
            }
        }
        Ok(())
    }

    /// Remove a vanished cgroup's files and, once empty, its directory.
    fn remove_dir(&mut self, rel: &str) -> Result<(), MirrorError> {
        let path = self.dir(rel);
        let files = InterfaceFile::READ_ONLY.into_iter().chain(InterfaceFile::WRITABLE.map(|(f, _)| f));
        for file in files.clone() {
            self.written.remove(&path.join(file.name()));
        }
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let opened = open_dir(&self.root, parent, false).and_then(|p| Ok((open_child(&p, name, false)?, p)));
        let (dir, parent) = match opened {
            Ok(fds) => fds,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(MirrorError { path, source }),
        };
        for file in files {
            match unlink_at(&dir, file.name(), 0) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(MirrorError { path: path.join(file.name()), source: e })
                }
                _ => {}
            }
        }
        match unlink_at(&parent, name, libc::AT_REMOVEDIR) {
            Err(e) if e.kind() != ErrorKind::NotFound && e.kind() != ErrorKind::DirectoryNotEmpty => {
                Err(MirrorError { path, source: e })
            }
            _ => Ok(()),
        }
    }
}

/// The content a new limit file starts with: the limit in force.
fn seeded(file: InterfaceFile, limit: &CgroupLimit) -> String {
    match file {
        InterfaceFile::Max => limit.max.to_string(),
        InterfaceFile::High => limit.high.to_string(),
        InterfaceFile::MaxAction => limit.action.to_string(),
        _ => unreachable!("{} is not a limit file", file.name()),
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

/// Open the directory `rel` below `root` (creating what is missing if
/// `create`), one component at a time without following symlinks: a
/// symlink anywhere below the root fails with ELOOP, it never redirects.
pub fn open_dir(root: &Path, rel: &str, create: bool) -> std::io::Result<OwnedFd> {
    if create {
        fs::create_dir_all(root)?;
    }
    let mut dir = OwnedFd::from(fs::File::open(root)?);
    for name in rel.split('/').filter(|c| !c.is_empty()) {
        dir = open_child(&dir, name, create)?;
    }
    Ok(dir)
}

/// The subdirectory `name` of `dir`, made (mode 0755, the writer's) if
/// missing and `create`.
fn open_child(dir: &OwnedFd, name: &str, create: bool) -> std::io::Result<OwnedFd> {
    if name == "." || name == ".." {
        return Err(std::io::Error::new(ErrorKind::InvalidInput, format!("{name:?} is not a cgroup name")));
    }
    let c = cname(name)?;
    // SAFETY: a valid directory fd and a NUL-terminated name.
    if create && unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o755) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != ErrorKind::AlreadyExists {
            return Err(e);
        }
    }
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: as above; the fd returned is owned by the OwnedFd.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Replace `name` in `dir` atomically with `content`: a temporary file
/// created exclusively (never through a link), handed to `owner` before it
/// is renamed over the old one, so the file never exists with the wrong
/// owner or a partial content.
pub fn replace_at(dir: &OwnedFd, name: &str, content: &str, owner: Owner) -> std::io::Result<()> {
    put_at(dir, name, content, owner, 0)
}

/// [`replace_at`] only if `name` does not exist: `Ok(false)` if it does
/// (one a writer made meanwhile is never overwritten).
fn create_at(dir: &OwnedFd, name: &str, content: &str, owner: Owner) -> std::io::Result<bool> {
    match put_at(dir, name, content, owner, libc::RENAME_NOREPLACE as libc::c_uint) {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        other => other.map(|()| true),
    }
}

/// Write `.name.<tid>.tmp` and rename it to `name` with renameat2's `rename` flags.
fn put_at(dir: &OwnedFd, name: &str, content: &str, owner: Owner, rename: libc::c_uint) -> std::io::Result<()> {
    // One temporary name per thread: the rounds and the NRI plugin write
    // the same directories.
    // SAFETY: gettid has no preconditions.
    let tmp = format!(".{name}.{}.tmp", unsafe { libc::gettid() });
    let ctmp = cname(&tmp)?;
    // A temporary file left by a writer that died.
    match unlink_at(dir, &tmp, 0) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a valid directory fd and a NUL-terminated name.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), ctmp.as_ptr(), flags, 0o644 as libc::c_uint) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd we own.
    let mut file = fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let written = file.write_all(content.as_bytes()).and_then(|()| match owner {
        Owner::Writer => Ok(()),
        Owner::Of(uid, gid) => std::os::unix::fs::fchown(&file, Some(uid), Some(gid)),
    });
    let renamed = written.and_then(|()| {
        let cname_ = cname(name)?;
        // SAFETY: valid directory fds and NUL-terminated names.
        let rc = unsafe { libc::renameat2(dir.as_raw_fd(), ctmp.as_ptr(), dir.as_raw_fd(), cname_.as_ptr(), rename) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    });
    if renamed.is_err() {
        let _ = unlink_at(dir, &tmp, 0);
    }
    renamed
}

/// The owner of `name` in `dir` (not followed if a symlink), if it exists.
pub fn owner_at(dir: &OwnedFd, name: &str) -> std::io::Result<Option<(u32, u32)>> {
    let c = cname(name)?;
    // SAFETY: fstatat writes into the zeroed struct we own.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), &mut stat, libc::AT_SYMLINK_NOFOLLOW) } == 0 {
        return Ok(Some((stat.st_uid, stat.st_gid)));
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == ErrorKind::NotFound {
        Ok(None)
    } else {
        Err(e)
    }
}

fn unlink_at(dir: &OwnedFd, name: &str, flags: libc::c_int) -> std::io::Result<()> {
    let c = cname(name)?;
    // SAFETY: a valid directory fd and a NUL-terminated name.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn cname(name: &str) -> std::io::Result<CString> {
    CString::new(name).map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "a file name with a NUL byte"))
}

#[cfg(test)]
mod tests {
    use pincg_cgroup_spec::{Action, Events, Limit, Source};

    use super::*;

    const NO_LIMIT: CgroupLimit = CgroupLimit { max: Limit::Max, high: Limit::Max, action: Action::Alert };

    fn row(id: u64, path: &str, io_uring: u64) -> CgroupRow {
        CgroupRow { id, events: Events { high: 1, max: 2 }, ..CgroupRow::sample(path, Source::IoUring, io_uring) }
    }

    /// A mirror root that does not exist yet (the mirror makes it), in a
    /// fixture that removes it.
    fn temp_root(fixture: &crate::fixture::Tree) -> PathBuf {
        fixture.join("mirror")
    }

    #[test]
    fn writes_files_and_removes_vanished_cgroups() {
        let fixture = crate::fixture::Tree::new();
        let root = temp_root(&fixture);
        let mut mirror = Mirror::new(&root, "/nonexistent");
        mirror.update(&[row(1, "", 67108864), row(2, "a", 67108864), row(3, "a/b", 67108864)], true, |_| NO_LIMIT);
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
        // After an incomplete scan nothing is removed.
        mirror.update(&[row(1, "", 0)], false, |_| NO_LIMIT);
        assert_eq!(fs::read_to_string(root.join("a/b/pins.max")).unwrap(), "max\n");
        mirror.update(&[row(1, "", 0), row(2, "a", 0)], true, |_| NO_LIMIT);
        assert!(!root.join("a/b").exists());
        assert_eq!(fs::read_to_string(root.join("a/pins.current")).unwrap(), "0\n");
        assert_eq!(fs::read_to_string(root.join("a/pins.max")).unwrap(), "1G\n");
        assert_eq!(fs::read_to_string(root.join("future/pins.max")).unwrap(), "1G\n");
    }

    #[test]
    fn a_directory_that_cannot_be_removed_is_reported_once_and_fails_no_round() {
        let fixture = crate::fixture::Tree::new();
        let root = temp_root(&fixture);
        let mut mirror = Mirror::new(&root, "/nonexistent");
        mirror.update(&[row(1, "", 0), row(2, "gone", 0)], true, |_| NO_LIMIT);
        // Something put where a file of the removed cgroup's mirror was.
        fs::remove_file(root.join("gone/pins.max")).unwrap();
        fs::create_dir_all(root.join("gone/pins.max/inside")).unwrap();
        for _ in 0..2 {
            mirror.update(&[row(1, "", 5)], true, |_| NO_LIMIT);
            assert_eq!(mirror.errors, 1, "reported once");
            assert_eq!(fs::read_to_string(root.join("pins.current")).unwrap(), "5\n", "the rest is written");
        }
        fs::remove_dir_all(root.join("gone/pins.max")).unwrap();
        mirror.update(&[row(1, "", 5)], true, |_| NO_LIMIT);
        assert!(!root.join("gone").exists(), "tried again until it goes");
    }

    #[test]
    fn new_limit_files_hold_the_limit_in_force() {
        let fixture = crate::fixture::Tree::new();
        let root = temp_root(&fixture);
        let mut mirror = Mirror::new(&root, "/nonexistent");
        let in_force = CgroupLimit { max: Limit::Bytes(16 << 20), high: Limit::Bytes(8 << 20), action: Action::Kill };
        mirror.update(&[row(1, "", 0), row(2, "vm", 0)], true, |r| if r.id == 2 { in_force } else { NO_LIMIT });
        assert_eq!(fs::read_to_string(root.join("vm/pins.max")).unwrap(), "16777216\n");
        assert_eq!(fs::read_to_string(root.join("vm/pins.high")).unwrap(), "8388608\n");
        assert_eq!(fs::read_to_string(root.join("vm/pins.max.action")).unwrap(), "kill\n");
        assert_eq!(fs::read_to_string(root.join("pins.max")).unwrap(), "max\n");
    }

    #[test]
    fn a_symlinked_component_is_refused_not_followed() {
        let fixture = crate::fixture::Tree::new();
        let root = temp_root(&fixture);
        let elsewhere = fixture.join("elsewhere");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("tenant")).unwrap();
        let mut mirror = Mirror::new(&root, "/nonexistent");
        let rows = [row(1, "", 0), row(2, "tenant/vm", 0), row(3, "other", 0)];
        mirror.update(&rows, true, |_| NO_LIMIT);
        mirror.update(&rows, true, |_| NO_LIMIT);
        assert_eq!(mirror.errors, 1, "refused (ENOTDIR), logged and counted once");
        assert_eq!(mirror.reported.values().collect::<Vec<_>>(), ["Not a directory (os error 20)"]);
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0, "nothing written through the link");
        assert_eq!(fs::read_to_string(root.join("other/pins.max")).unwrap(), "max\n", "the other cgroups are mirrored");
        // A symlink planted as the temporary file is removed, never written through.
        let dir = open_dir(&root, "", false).unwrap();
        // SAFETY: gettid has no preconditions.
        let tmp = format!(".pins.max.{}.tmp", unsafe { libc::gettid() });
        std::os::unix::fs::symlink(elsewhere.join("victim"), root.join(tmp)).unwrap();
        replace_at(&dir, "pins.max", "max\n", Owner::Writer).unwrap();
        assert!(!elsewhere.join("victim").exists());
        assert_eq!(fs::read_to_string(root.join("pins.max")).unwrap(), "max\n");
    }

    #[test]
    fn a_replaced_file_is_handed_over_before_it_appears() {
        let fixture = crate::fixture::Tree::new();
        let root = temp_root(&fixture);
        fs::create_dir_all(&root).unwrap();
        let dir = open_dir(&root, "", false).unwrap();
        // SAFETY: geteuid has no preconditions.
        let (uid, gid) = if unsafe { libc::geteuid() } == 0 {
            (1000, 1000)
        } else {
            (unsafe { libc::geteuid() }, unsafe { libc::getegid() })
        };
        replace_at(&dir, "pins.max", "max\n", Owner::Of(uid, gid)).unwrap();
        assert_eq!(owner_at(&dir, "pins.max").unwrap(), Some((uid, gid)));
        assert_eq!(owner_at(&dir, "pins.high").unwrap(), None);
    }

    #[test]
    fn a_failed_write_names_the_file_and_its_cause_once() {
        let e =
            MirrorError { path: "/run/pincg/cgroup/a/pins.max".into(), source: std::io::Error::from_raw_os_error(20) };
        let chain = format!("{:#}", anyhow::Error::new(e).context("round"));
        let cause = ": Not a directory (os error 20)";
        assert!(chain.starts_with("round: mirror file /run/pincg/cgroup/a/pins.max"), "{chain}");
        assert!(chain.ends_with(cause) && chain.matches(cause).count() == 1, "{chain}");
    }
}
