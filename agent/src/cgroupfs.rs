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
/// the root cgroup itself).
#[derive(Debug, Default, Clone)]
pub struct CgroupTree {
    paths: HashMap<u64, String>,
}

impl CgroupTree {
    /// Walk the hierarchy mounted at `root`. Cgroups that vanish while the
    /// walk runs are skipped, not errors.
    pub fn scan(root: &Path) -> std::io::Result<CgroupTree> {
        let mut paths = HashMap::new();
        paths.insert(fs::metadata(root)?.ino(), String::new());
        let mut pending: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
        while let Some((dir, rel)) = pending.pop() {
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else { continue };
                if !kind.is_dir() {
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
                paths.insert(meta.ino(), child.clone());
                pending.push((entry.path(), child));
            }
        }
        Ok(CgroupTree { paths })
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
        let root = std::env::temp_dir().join(format!("pincg-cgroupfs-{}", std::process::id()));
        fs::create_dir_all(root.join("vm.slice/vm-1.scope")).unwrap();
        fs::write(root.join("vm.slice/pins.current"), "0\n").unwrap();
        let tree = CgroupTree::scan(&root).unwrap();
        let ino = |p: &str| fs::metadata(root.join(p)).unwrap().ino();
        let mut seen: Vec<(u64, &str)> = tree.iter().collect();
        seen.sort_by_key(|(_, p)| p.len());
        assert_eq!(
            seen,
            [(ino(""), ""), (ino("vm.slice"), "vm.slice"), (ino("vm.slice/vm-1.scope"), "vm.slice/vm-1.scope")]
        );
        assert_eq!(display_path("vm.slice"), "/vm.slice");
        fs::remove_dir_all(root).unwrap();
    }
}
