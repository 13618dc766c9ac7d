//! Limit files put in force as they are written, not at the next round.
//!
//! An inotify watch on each mirror directory wakes the round thread while
//! it waits for its next round, and only the written cgroup's limit files
//! are read. The rounds still stat every limit file, as before: what a
//! watch misses (no watch yet for a new directory, `max_user_watches`
//! reached, the event queue overflowing) is in force at the next round.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::time::Duration;

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use pincg_cgroup_spec::InterfaceFile;

/// The writes that finish a limit file: a writer closing it (in place, a
/// delegatee's `pincg set`, `echo`), or a file renamed over it (root's
/// atomic replace, the NRI plugin).
const WRITTEN: WatchMask = WatchMask::CLOSE_WRITE.union(WatchMask::MOVED_TO);

/// The mirror directories watched, by cgroup.
pub struct LimitWatch {
    inotify: Inotify,
    /// Watch descriptor → (cgroup id, directory below the mirror root).
    dirs: HashMap<i32, (u64, String)>,
    /// Cgroup id → its watch.
    watched: HashMap<u64, WatchDescriptor>,
    /// Watches refused for want of room (`fs.inotify.max_user_watches`),
    /// reported once: those cgroups wait for the round.
    short_reported: bool,
}

impl LimitWatch {
    pub fn new() -> std::io::Result<LimitWatch> {
        Ok(LimitWatch {
            inotify: Inotify::init()?,
            dirs: HashMap::new(),
            watched: HashMap::new(),
            short_reported: false,
        })
    }

    /// Watch the mirror directory of each `(cgroup, rel)` not watched yet,
    /// and forget the cgroups no longer among them; the cgroups watched
    /// now (their files may have been written before). A directory the
    /// round has not made yet is watched at a later round.
    pub fn keep<'a>(
        &mut self,
        mirror_root: &Path,
        cgroups: impl Iterator<Item = (u64, &'a str)>,
    ) -> Vec<(u64, String)> {
        let mut added = Vec::new();
        let mut live = HashSet::new();
        for (id, rel) in cgroups {
            live.insert(id);
            if self.watched.contains_key(&id) {
                continue;
            }
            let mask = WRITTEN | WatchMask::ONLYDIR | WatchMask::DONT_FOLLOW;
            match self.inotify.watches().add(mirror_root.join(rel), mask) {
                Ok(wd) => {
                    self.dirs.insert(wd.get_watch_descriptor_id(), (id, rel.to_string()));
                    self.watched.insert(id, wd);
                    added.push((id, rel.to_string()));
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && !self.short_reported => {
                    self.short_reported = true;
                    tracing::warn!(
                        "{}: no inotify watch left (fs.inotify.max_user_watches): limits written there and in \
                         later cgroups are put in force at the next round",
                        mirror_root.join(rel).display()
                    );
                }
                Err(_) => {}
            }
        }
        let gone: Vec<u64> = self.watched.keys().filter(|id| !live.contains(id)).copied().collect();
        for id in gone {
            let Some(wd) = self.watched.remove(&id) else { continue };
            // A new cgroup of the same name may have taken the directory
            // (and so the same watch) since: then the watch is its own.
            let key = wd.get_watch_descriptor_id();
            if self.dirs.get(&key).is_some_and(|(owner, _)| *owner == id) {
                self.dirs.remove(&key);
                let _ = self.inotify.watches().remove(wd);
            }
        }
        added
    }

    /// Wait up to `timeout` for limit files to be written: the cgroups
    /// (id, directory) written to, each once; none when the time is up.
    pub fn wait(&mut self, timeout: Duration) -> Vec<(u64, String)> {
        let mut fd = libc::pollfd { fd: self.inotify.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd, for the duration of the call.
        if unsafe { libc::poll(&mut fd, 1, ms) } <= 0 {
            return Vec::new();
        }
        let mut buffer = [0u8; 16 * 1024];
        let mut written: Vec<(u64, String)> = Vec::new();
        let Ok(events) = self.inotify.read_events(&mut buffer) else { return written };
        for event in events {
            let wd = event.wd.get_watch_descriptor_id();
            if event.mask.contains(EventMask::IGNORED) {
                // The directory is gone (its cgroup was removed).
                if let Some((id, _)) = self.dirs.remove(&wd) {
                    self.watched.remove(&id);
                }
                continue;
            }
            let is_limit = event.name.is_some_and(|n| InterfaceFile::WRITABLE.iter().any(|(f, _)| n == f.name()));
            if let (true, Some(dir)) = (is_limit, self.dirs.get(&wd)) {
                if !written.contains(dir) {
                    written.push(dir.clone());
                }
            }
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::Tree;

    /// A mirror with directories `dirs` (cgroup ids 1, 2, ...), all watched.
    fn watched(dirs: &[&str]) -> (Tree, LimitWatch) {
        let tree = Tree::new();
        for dir in dirs {
            tree.mkdir(dir);
        }
        let mut watch = LimitWatch::new().unwrap();
        let added = watch.keep(tree.root(), dirs.iter().enumerate().map(|(i, d)| (i as u64 + 1, *d)));
        assert_eq!(added.len(), dirs.len());
        (tree, watch)
    }

    #[test]
    fn a_written_limit_file_wakes_the_wait_with_its_cgroup_only() {
        let (tree, mut watch) = watched(&["vm1", "vm2"]);
        assert!(watch.wait(Duration::from_millis(10)).is_empty(), "nothing written yet");

        // A value the agent writes (pins.current) is not a limit.
        tree.write("vm1/pins.current", "0\n");
        assert!(watch.wait(Duration::from_millis(10)).is_empty());

        // Written in place, and renamed over: both wake it.
        tree.write("vm1/pins.max", "1G");
        tree.write("vm2/.pins.high.new", "1M");
        std::fs::rename(tree.join("vm2/.pins.high.new"), tree.join("vm2/pins.high")).unwrap();
        let mut woke = Vec::new();
        while woke.len() < 2 {
            let got = watch.wait(Duration::from_secs(5));
            assert!(!got.is_empty(), "no event within 5 s; have {woke:?}");
            woke.extend(got);
        }
        woke.sort();
        assert_eq!(woke, vec![(1, "vm1".to_string()), (2, "vm2".to_string())]);
    }

    #[test]
    fn a_removed_directory_and_a_cgroup_no_longer_listed_are_forgotten() {
        let (tree, mut watch) = watched(&["a", "b"]);
        // A directory that does not exist yet is not watched, and no error.
        assert!(watch.keep(tree.root(), [(1, "a"), (2, "b"), (3, "c")].into_iter()).is_empty());
        assert_eq!(watch.watched.len(), 2);

        std::fs::remove_dir(tree.join("a")).unwrap();
        assert!(watch.wait(Duration::from_secs(5)).is_empty());
        assert!(!watch.watched.contains_key(&1), "IN_IGNORED forgets cgroup 1");
        assert!(watch.keep(tree.root(), [(3, "c")].into_iter()).is_empty());
        assert!(watch.watched.is_empty() && watch.dirs.is_empty(), "cgroup 2 is no longer listed");
    }
}
