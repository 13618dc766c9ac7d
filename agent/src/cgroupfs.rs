//! The cgroup v2 hierarchy as pincg sees it: ids (directory inode numbers,
//! which is what `bpf_get_current_cgroup_id()` returns) and paths.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Where cgroup v2 is mounted: the first `cgroup2` entry of
/// `/proc/self/mountinfo` (`/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one).
pub fn find_cgroup2() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup2_in_mountinfo(&mountinfo)
}

fn cgroup2_in_mountinfo(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (fields, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = fields.split_whitespace().nth(4)?;
        // mountinfo escapes space, tab, newline and backslash in octal.
        Some(PathBuf::from(mount_point.replace("\\040", " ")))
    })
}

/// A snapshot of the cgroup tree: id → path relative to the root ("" is
/// the root cgroup itself), and the directories the walk could not read.
#[derive(Debug, Default, Clone)]
pub struct CgroupTree {
    paths: HashMap<u64, String>,
    gaps: Vec<ScanGap>,
}

/// A directory the walk could not read (permission, EMFILE, a path too
/// long): the cgroups below it are missing from the tree, so the tree
/// cannot tell which cgroups were removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ScanGap {
    pub path: PathBuf,
    pub reason: String,
}

/// A child cgroup directory found by one listing: its name and inode.
pub struct Child {
    pub name: String,
    pub ino: u64,
}

/// How a walk opens and lists directories: through file descriptors on the
/// host ([`FdWalk`]), through a closure in tests.
trait Walk {
    type Dir;
    fn root(&self, root: &Path) -> std::io::Result<Self::Dir>;
    fn child(&self, parent: &Self::Dir, name: &str) -> std::io::Result<Self::Dir>;
    fn list(&self, dir: &Self::Dir) -> std::io::Result<Vec<Child>>;
}

impl CgroupTree {
    /// Walk the hierarchy mounted at `root`. A cgroup that vanishes while
    /// the walk runs is left out (it was removed); any other failure to read
    /// a directory is a [`ScanGap`] and makes the tree incomplete.
    ///
    /// Each directory is opened relative to its parent's descriptor, so no
    /// depth of nesting and no length of path (a delegatee can make paths
    /// longer than PATH_MAX) leaves a gap that would stop every cleanup.
    pub fn scan(root: &Path) -> std::io::Result<CgroupTree> {
        CgroupTree::scan_with(root, &FdWalk)
    }

    fn scan_with<W: Walk>(root: &Path, walk: &W) -> std::io::Result<CgroupTree> {
        let mut tree = CgroupTree::default();
        tree.paths.insert(fs::metadata(root)?.ino(), String::new());
        let top = Rc::new(walk.root(root)?);
        let mut pending = match walk.list(&top) {
            Ok(children) => children.into_iter().map(|c| (top.clone(), root.to_path_buf(), String::new(), c)).collect(),
            Err(e) => {
                tree.gaps.push(ScanGap { path: root.to_path_buf(), reason: e.to_string() });
                Vec::new()
            }
        };
        // Depth first: a parent's descriptor stays open while its children
        // wait, so as many are open as the walk is deep.
        while let Some((parent, parent_path, parent_rel, Child { name, ino })) = pending.pop() {
            let rel = if parent_rel.is_empty() { name.clone() } else { format!("{parent_rel}/{name}") };
            let path = parent_path.join(&name);
            tree.paths.insert(ino, rel.clone());
            let listed = walk.child(&parent, &name).and_then(|dir| Ok((walk.list(&dir)?, dir)));
            drop(parent);
            match listed {
                Ok((children, dir)) => {
                    let dir = Rc::new(dir);
                    pending.extend(children.into_iter().map(|c| (dir.clone(), path.clone(), rel.clone(), c)));
                }
                Err(e) if vanished(&e) => {}
                Err(e) => tree.gaps.push(ScanGap { path, reason: e.to_string() }),
            }
        }
        Ok(tree)
    }

    /// `Ok` if every directory was read; else the first that was not, and
    /// how many were not.
    pub fn complete(&self) -> Result<(), (usize, &ScanGap)> {
        match self.gaps.first() {
            None => Ok(()),
            Some(first) => Err((self.gaps.len(), first)),
        }
    }

    /// The path of cgroup `id`, relative to the root, if it exists.
    pub fn path(&self, id: u64) -> Option<&str> {
        self.paths.get(&id).map(String::as_str)
    }

    pub fn contains(&self, id: u64) -> bool {
        self.paths.contains_key(&id)
    }

    /// Every cgroup, as (id, relative path).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &str)> {
        self.paths.iter().map(|(id, p)| (*id, p.as_str()))
    }
}

/// The host's walk: directories opened with `openat` relative to their
/// parent (never through a symlink), listed through `/proc/self/fd`.
struct FdWalk;

impl Walk for FdWalk {
    type Dir = OwnedFd;

    fn root(&self, root: &Path) -> std::io::Result<OwnedFd> {
        let c = CString::new(root.as_os_str().as_bytes())?;
        open_dir_at(libc::AT_FDCWD, &c)
    }

    fn child(&self, parent: &OwnedFd, name: &str) -> std::io::Result<OwnedFd> {
        open_dir_at(parent.as_raw_fd(), &CString::new(name)?)
    }

    /// The child directories. An entry that vanished between the listing
    /// and its stat is left out; any other error fails the listing.
    fn list(&self, dir: &OwnedFd) -> std::io::Result<Vec<Child>> {
        let mut children = Vec::new();
        for entry in fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
            let entry = entry?;
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if vanished(&e) => continue,
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                children.push(Child { name: entry.file_name().to_string_lossy().into_owned(), ino: meta.ino() });
            }
        }
        Ok(children)
    }
}

fn open_dir_at(at: libc::c_int, name: &CString) -> std::io::Result<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a valid directory fd (or AT_FDCWD) and a NUL-terminated name.
    let fd = unsafe { libc::openat(at, name.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor, owned from here on.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A cgroup removed while the walk ran: not a gap in the tree.
fn vanished(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

/// `/`-prefixed display form of a relative cgroup path.
pub fn display_path(rel: &str) -> String {
    format!("/{rel}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A walk by paths whose listings a closure makes up.
    struct Listed<F>(F);

    impl<F: Fn(&Path) -> std::io::Result<Vec<Child>>> Walk for Listed<F> {
        type Dir = PathBuf;
        fn root(&self, root: &Path) -> std::io::Result<PathBuf> {
            Ok(root.to_path_buf())
        }
        fn child(&self, parent: &PathBuf, name: &str) -> std::io::Result<PathBuf> {
            Ok(parent.join(name))
        }
        fn list(&self, dir: &PathBuf) -> std::io::Result<Vec<Child>> {
            (self.0)(dir)
        }
    }

    #[test]
    fn finds_the_cgroup2_mount() {
        let info = "24 30 0:21 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw\n\
                    35 24 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_in_mountinfo(info), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(cgroup2_in_mountinfo("24 30 0:21 / /x rw - tmpfs tmpfs rw\n"), None);
    }

    #[test]
    fn scan_maps_inodes_to_relative_paths() {
        let fixture = crate::fixture::Tree::new();
        fixture.mkdir("vm.slice/vm-1.scope");
        fixture.write("vm.slice/pins.current", "0\n");
        let root = fixture.root();
        let tree = CgroupTree::scan(root).unwrap();
        let ino = |p: &str| fs::metadata(root.join(p)).unwrap().ino();
        let mut seen: Vec<(u64, &str)> = tree.iter().collect();
        seen.sort_by_key(|(_, p)| p.len());
        assert_eq!(
            seen,
            [(ino(""), ""), (ino("vm.slice"), "vm.slice"), (ino("vm.slice/vm-1.scope"), "vm.slice/vm-1.scope")]
        );
        assert_eq!(display_path("vm.slice"), "/vm.slice");
        assert_eq!(tree.complete(), Ok(()));
    }

    #[test]
    fn paths_longer_than_path_max_are_walked_without_a_gap() {
        let fixture = crate::fixture::Tree::new();
        let root = fixture.root();
        // 20 levels of 250-byte names: a 5000-byte path, made and walked
        // relative to each parent, as a delegatee can make it.
        let name = "n".repeat(250);
        let mut dir = FdWalk.root(root).unwrap();
        for _ in 0..20 {
            let c = CString::new(name.as_str()).unwrap();
            // SAFETY: a valid directory fd and a NUL-terminated name.
            assert_eq!(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o755) }, 0);
            dir = FdWalk.child(&dir, &name).unwrap();
        }
        let tree = CgroupTree::scan(root).unwrap();
        assert_eq!(tree.complete(), Ok(()));
        let deepest = tree.iter().map(|(_, p)| p.len()).max().unwrap();
        assert_eq!(deepest, 20 * 250 + 19);
    }

    #[test]
    fn a_vanished_directory_is_removed_an_unreadable_one_is_a_gap() {
        let fixture = crate::fixture::Tree::new();
        let root = fixture.root();
        let errno = |n| Err(std::io::Error::from_raw_os_error(n));
        let list = |dir: &Path| -> std::io::Result<Vec<Child>> {
            let child = |name: &str, ino| Child { name: name.into(), ino };
            match dir.strip_prefix(root).unwrap().to_str().unwrap() {
                "" => Ok(vec![child("gone", 10), child("tenant", 11), child("busy", 12), child("ok", 13)]),
                "gone" => errno(libc::ENOENT),
                "tenant" => errno(libc::EACCES),
                "busy" => errno(libc::EMFILE),
                "ok" => Ok(vec![child("leaf", 14)]),
                _ => Ok(vec![]),
            }
        };
        let tree = CgroupTree::scan_with(root, &Listed(list)).unwrap();
        assert_eq!(tree.path(14), Some("ok/leaf"));
        assert_eq!(tree.path(10), Some("gone"), "listed before it vanished");
        let (count, _) = tree.complete().unwrap_err();
        assert_eq!(count, 2, "EACCES and EMFILE are gaps, ENOENT is not");
        let mut gaps: Vec<String> = tree.gaps.iter().map(ToString::to_string).collect();
        gaps.sort();
        assert_eq!(
            gaps,
            [
                format!("{}: Too many open files (os error 24)", root.join("busy").display()),
                format!("{}: Permission denied (os error 13)", root.join("tenant").display()),
            ]
        );

        let only_gone = |dir: &Path| {
            if dir == root {
                Ok(vec![Child { name: "gone".into(), ino: 10 }])
            } else {
                errno(libc::ENOENT)
            }
        };
        assert_eq!(
            CgroupTree::scan_with(root, &Listed(only_gone)).unwrap().complete(),
            Ok(()),
            "vanished mid-walk is complete"
        );
    }
}
