//! The cgroup v2 hierarchy as pincg sees it: ids (directory inode numbers,
//! which is what `bpf_get_current_cgroup_id()` returns) and paths.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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

impl CgroupTree {
    /// Walk the hierarchy mounted at `root`. A cgroup that vanishes while
    /// the walk runs is left out (it was removed); any other failure to read
    /// a directory is a [`ScanGap`] and makes the tree incomplete.
    pub fn scan(root: &Path) -> std::io::Result<CgroupTree> {
        CgroupTree::scan_with(root, list_children)
    }

    /// [`CgroupTree::scan`] with the directory listing given, for tests.
    fn scan_with(root: &Path, list: impl Fn(&Path) -> std::io::Result<Vec<Child>>) -> std::io::Result<CgroupTree> {
        let mut tree = CgroupTree::default();
        tree.paths.insert(fs::metadata(root)?.ino(), String::new());
        let mut pending: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
        while let Some((dir, rel)) = pending.pop() {
            let children = match list(&dir) {
                Ok(children) => children,
                Err(e) if vanished(&e) => continue,
                Err(e) => {
                    tree.gaps.push(ScanGap { path: dir, reason: e.to_string() });
                    continue;
                }
            };
            for Child { name, ino } in children {
                let child = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
                tree.paths.insert(ino, child.clone());
                pending.push((dir.join(name), child));
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

/// The child directories of `dir`. An entry that vanished between the
/// listing and its stat is left out; any other error fails the listing.
fn list_children(dir: &Path) -> std::io::Result<Vec<Child>> {
    let mut children = Vec::new();
    for entry in fs::read_dir(dir)? {
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
        let tree = CgroupTree::scan_with(root, list).unwrap();
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
        assert_eq!(CgroupTree::scan_with(root, only_gone).unwrap().complete(), Ok(()), "vanished mid-walk is complete");
    }
}
