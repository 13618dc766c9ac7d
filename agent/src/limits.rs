//! Limits written by orchestrators into the mirror tree (`pins.max`,
//! `pins.high`, `pins.max.action`), checked and put in force in BPF.
//!
//! Bad input never stops the agent and never loses a limit: a file that is
//! garbage, negative, too large for 64 bits, a symlink, a directory or
//! larger than a page leaves the previous value in force, and is reported
//! once (log line and `pincg_limit_errors_total`) until its content changes.
//!
//! A value that parses but is not in canonical form is rewritten in it once
//! it is in force, keeping the file's owner: the rewrite is how a writer
//! that cannot read BPF maps (a delegatee's `pincg set`) learns the agent
//! took its value. An empty file is a write in progress, not an error.
//!
//! The node budget is the root cgroup's limit: the root's `pins.max` in
//! force is the lower of the budget and the mirror root's own `pins.max`,
//! so no file can lift it and no sync removes it.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use pincg_bpf::ledger::{CgroupLimit, Ledger};
use pincg_cgroup_spec::{parse_action, parse_limit, Action, InterfaceFile, Limit};

use crate::mirror::Owner;
use crate::snapshot::CgroupRow;

/// Largest limit file read; anything longer is refused.
const MAX_FILE: u64 = 4096;

/// Why a limit file was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}; the previous value stays in force")]
pub struct LimitFileError {
    pub path: PathBuf,
    pub reason: String,
}

/// What identifies a version of a file without reading it: inode, length,
/// and modification and change times (ns).
type Stamp = (u64, u64, i128, i128);

/// A file changed less than this before it was read may change again
/// within the same timestamp tick, unseen by its stamp: it is read again.
const SETTLED: std::time::Duration = std::time::Duration::from_secs(1);

/// The limits last put in force, and the errors already reported.
#[derive(Default)]
pub struct Limits {
    in_force: HashMap<u64, CgroupLimit>,
    reported: HashMap<PathBuf, String>,
    /// Each limit file's content as last read, by its stamp: a file is read
    /// again only when it changed (a stat per file per round, not a read),
    /// or when it had not settled at that read (`SETTLED`).
    seen: HashMap<PathBuf, (Stamp, bool, Result<String, String>)>,
    /// The mirror directory of each cgroup synced, to forget its files.
    dirs: HashMap<u64, PathBuf>,
    /// Files of the cgroup being synced to rewrite in canonical form once
    /// their values are in force.
    rewrite: Vec<(InterfaceFile, String)>,
    /// Bad files seen since start, for the metrics.
    pub errors: u64,
    /// Bytes all pins on the node together may not exceed.
    pub node_budget: Option<u64>,
}

impl Limits {
    /// Start from the limits in force in BPF (`in_force`, left by a
    /// previous agent), with the node budget of this agent's configuration.
    pub fn resume(in_force: HashMap<u64, CgroupLimit>, node_budget: Option<u64>) -> Limits {
        Limits { in_force, node_budget, ..Limits::default() }
    }

    /// Read the limit files of `cgroup` (directory `rel` of the mirror at
    /// `mirror_root`; "" is the root cgroup) and put what changed in force;
    /// then rewrite the files that were not in canonical form.
    pub fn sync(&mut self, ledger: &Ledger, cgroup: u64, mirror_root: &Path, rel: &str) {
        let dir = mirror_root.join(rel);
        self.dirs.entry(cgroup).or_insert_with(|| dir.clone());
        self.rewrite.clear();
        let previous = self.in_force.get(&cgroup).copied().unwrap_or(NO_LIMIT);
        let max = self.read(&dir, InterfaceFile::Max, parse_limit, previous.max);
        let high = self.read(&dir, InterfaceFile::High, parse_limit, previous.high);
        let action = self.read(&dir, InterfaceFile::MaxAction, parse_action, previous.action);
        let max = if rel.is_empty() { within(max, self.node_budget) } else { max };
        let wanted = CgroupLimit { max, high, action };
        if self.in_force.get(&cgroup).copied().unwrap_or(NO_LIMIT) != wanted {
            match ledger.set_limit(cgroup, &wanted) {
                Ok(()) => {
                    tracing::info!("{}: max {max}, high {high}, action {action} in force", dir.display());
                    self.in_force.insert(cgroup, wanted);
                }
                // Retried every round while it fails: logged once per window.
                Err(e) => {
                    crate::logging::report(
                        tracing::Level::ERROR,
                        format!("{}: limit not put in force: {}", dir.display(), crate::logging::chain(&e)),
                    );
                    return;
                }
            }
        }
        for (file, canonical) in std::mem::take(&mut self.rewrite) {
            self.rewrite_canonical(mirror_root, rel, file, &canonical);
        }
    }

    /// Rewrite a limit file in canonical form, keeping its owner (a
    /// delegatee's file stays the delegatee's). One that cannot keep its
    /// owner is left as written, reported once.
    fn rewrite_canonical(&mut self, mirror_root: &Path, rel: &str, file: InterfaceFile, canonical: &str) {
        let path = mirror_root.join(rel).join(file.name());
        let done = crate::mirror::open_dir(mirror_root, rel, false).and_then(|dir| {
            let owner = match crate::mirror::owner_at(&dir, file.name())? {
                Some((uid, gid)) => Owner::Of(uid, gid),
                None => return Ok(()),
            };
            crate::mirror::replace_at(&dir, file.name(), canonical, owner)
        });
        if let Err(e) = done {
            let reason = format!("in force, but not rewritten in canonical form ({e})");
            if self.reported.get(&path) != Some(&reason) {
                self.errors += 1;
                tracing::warn!("{}: {reason}", path.display());
                self.reported.insert(path, reason);
            }
        }
    }

    /// What a new mirror limit file of `row`'s cgroup starts with: the limit
    /// in force, except that the root's `pins.max` leaves the node budget out
    /// (it applies anyway, and written into the file it would outlast a
    /// change of the configuration).
    pub fn seed(&self, row: &CgroupRow) -> CgroupLimit {
        let mut limit = self.in_force.get(&row.id).copied().unwrap_or(NO_LIMIT);
        if row.path.as_deref() == Some("") && self.node_budget.is_some_and(|b| limit.max == Limit::Bytes(b)) {
            limit.max = Limit::Max;
        }
        limit
    }

    /// Forget a removed cgroup: its limit and what was read of its files.
    /// (Its BPF entry is dropped by the sampler, which sees it removed.)
    pub fn forget(&mut self, cgroup: u64) {
        if let Some(dir) = self.dirs.remove(&cgroup) {
            self.seen.retain(|path, _| !path.starts_with(&dir));
            self.reported.retain(|path, _| !path.starts_with(&dir));
        }
        self.in_force.remove(&cgroup);
    }

    /// Every cgroup synced and not forgotten.
    pub fn cgroups(&self) -> impl Iterator<Item = u64> + '_ {
        self.dirs.keys().copied()
    }

    /// Parse one file; on any problem report it once and keep `previous`.
    /// A value that parses but is not in canonical form is rewritten in it.
    fn read<T: PartialEq + std::fmt::Display + Copy, E: std::fmt::Display>(
        &mut self,
        dir: &Path,
        file: InterfaceFile,
        parse: impl Fn(&str) -> Result<T, E>,
        previous: T,
    ) -> T {
        let path = dir.join(file.name());
        let result = self.read_changed(&path).and_then(|text| match parse(&text) {
            Ok(value) => Ok((value, text)),
            Err(e) => Err(e.to_string()),
        });
        match result {
            Ok((value, text)) => {
                self.reported.remove(&path);
                let canonical = format!("{value}\n");
                if text != canonical {
                    self.rewrite.push((file, canonical));
                }
                value
            }
            Err(reason) if reason == MISSING || reason == EMPTY => previous,
            Err(reason) => {
                if self.reported.get(&path) != Some(&reason) {
                    self.errors += 1;
                    tracing::warn!("{}", LimitFileError { path: path.clone(), reason: reason.clone() });
                    self.reported.insert(path, reason);
                }
                previous
            }
        }
    }
}

impl Limits {
    fn read_changed(&mut self, path: &Path) -> Result<String, String> {
        use std::os::unix::fs::MetadataExt;
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) => {
                self.seen.remove(path);
                if e.kind() == std::io::ErrorKind::NotFound {
                    return Err(MISSING.into());
                }
                return Err(e.to_string());
            }
        };
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        let stamp = (meta.ino(), meta.len(), ns(meta.mtime(), meta.mtime_nsec()), ns(meta.ctime(), meta.ctime_nsec()));
        if let Some((seen, true, content)) = self.seen.get(path) {
            if *seen == stamp {
                return content.clone();
            }
        }
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
        // By ctime, which every write sets to now and no writer can set
        // (a delegatee can put mtime in the future).
        let settled = now - stamp.3 >= SETTLED.as_nanos() as i128;
        let content = read_small(path);
        self.seen.insert(path.to_path_buf(), (stamp, settled, content.clone()));
        content
    }
}

/// `limit`, lowered to `budget` if there is one.
fn within(limit: Limit, budget: Option<u64>) -> Limit {
    match (limit, budget) {
        (Limit::Bytes(b), Some(budget)) => Limit::Bytes(b.min(budget)),
        (Limit::Max, Some(budget)) => Limit::Bytes(budget),
        (limit, None) => limit,
    }
}

/// Why `read_small` returned nothing, when that is no problem.
const MISSING: &str = "missing";
const EMPTY: &str = "empty";

const NO_LIMIT: CgroupLimit = CgroupLimit { max: Limit::Max, high: Limit::Max, action: Action::Alert };

/// Read a limit file: a regular file (not followed through a symlink) of at
/// most [`MAX_FILE`] bytes of UTF-8. `Err(MISSING)` if it does not exist,
/// `Err(EMPTY)` while a writer has truncated it and not yet written.
fn read_small(path: &Path) -> Result<String, String> {
    let file = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(MISSING.into()),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err("is a symlink, not a file".into()),
        Err(e) => return Err(e.to_string()),
    };
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if meta.is_dir() {
        return Err("is a directory, not a file".into());
    }
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.len() > MAX_FILE {
        return Err(format!("is {} bytes; a limit file holds at most {MAX_FILE}", meta.len()));
    }
    let mut text = String::new();
    file.take(MAX_FILE).read_to_string(&mut text).map_err(|e| format!("is not UTF-8 text ({e})"))?;
    if text.is_empty() {
        return Err(EMPTY.into());
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Puts one kind of bad limit file in place.
    type MakeFile<'a> = Box<dyn Fn() + 'a>;

    fn read_max(limits: &mut Limits, d: &Path, previous: Limit) -> Limit {
        limits.read(d, InterfaceFile::Max, parse_limit, previous)
    }

    #[test]
    fn good_values_are_taken_and_rendered_canonically() {
        let fixture = crate::fixture::Tree::new();
        let d = fixture.root();
        let mut limits = Limits::default();
        fs::write(d.join("pins.max"), "16G").unwrap();
        // SAFETY: geteuid has no preconditions.
        let delegatee = if unsafe { libc::geteuid() } == 0 { 1000 } else { unsafe { libc::geteuid() } };
        std::os::unix::fs::chown(d.join("pins.max"), Some(delegatee), None).unwrap();
        assert_eq!(read_max(&mut limits, d, Limit::Max), Limit::Bytes(16 << 30));
        assert_eq!(fs::read_to_string(d.join("pins.max")).unwrap(), "16G", "rewritten only once in force");
        assert_eq!(limits.rewrite, [(InterfaceFile::Max, "17179869184\n".to_string())]);
        let (root, rel) = (d.parent().unwrap(), d.file_name().unwrap().to_str().unwrap());
        limits.rewrite_canonical(root, rel, InterfaceFile::Max, "17179869184\n");
        assert_eq!(fs::read_to_string(d.join("pins.max")).unwrap(), "17179869184\n");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(d.join("pins.max")).unwrap().uid(), delegatee, "the delegatee keeps its file");
        limits.rewrite.clear();
        fs::write(d.join("pins.max"), "max\n").unwrap();
        assert_eq!(read_max(&mut limits, d, Limit::Bytes(1)), Limit::Max);
        assert!(limits.rewrite.is_empty());
        // Truncated by a writer that has not written yet: nothing to report.
        fs::write(d.join("pins.max"), "").unwrap();
        assert_eq!(read_max(&mut limits, d, Limit::Bytes(1)), Limit::Bytes(1));
        assert_eq!(limits.errors, 0);
    }

    #[test]
    fn a_rewrite_of_the_same_length_at_once_is_read() {
        let fixture = crate::fixture::Tree::new();
        let d = fixture.root();
        let mut limits = Limits::default();
        // Within one timestamp tick, the stamp (inode, length, times) of the
        // two versions can be equal: an unsettled file is read again.
        fs::write(d.join("pins.max"), "1073741824\n").unwrap();
        assert_eq!(read_max(&mut limits, d, Limit::Max), Limit::Bytes(1 << 30));
        fs::write(d.join("pins.max"), "2147483648\n").unwrap();
        assert_eq!(read_max(&mut limits, d, Limit::Max), Limit::Bytes(2 << 30));
    }

    #[test]
    fn every_kind_of_bad_input_keeps_the_previous_limit_and_is_reported_once() {
        let fixture = crate::fixture::Tree::new();
        let d = fixture.root();
        let previous = Limit::Bytes(80 << 20);
        let file = d.join("pins.max");
        let cases: Vec<(&str, MakeFile)> = vec![
            ("garbage", Box::new(|| fs::write(d.join("pins.max"), "lots of memory").unwrap())),
            ("no digit", Box::new(|| fs::write(d.join("pins.max"), ".G").unwrap())),
            ("negative", Box::new(|| fs::write(d.join("pins.max"), "-1").unwrap())),
            ("overflow", Box::new(|| fs::write(d.join("pins.max"), "18446744073709551616").unwrap())),
            ("unit typo", Box::new(|| fs::write(d.join("pins.max"), "16GG").unwrap())),
            ("huge file", Box::new(|| fs::write(d.join("pins.max"), "1".repeat(1 << 20)).unwrap())),
            ("not utf-8", Box::new(|| fs::write(d.join("pins.max"), [0xff, 0xfe]).unwrap())),
            (
                "symlink",
                Box::new(|| {
                    fs::write(d.join("elsewhere"), "1G").unwrap();
                    std::os::unix::fs::symlink(d.join("elsewhere"), d.join("pins.max")).unwrap();
                }),
            ),
            ("directory", Box::new(|| fs::create_dir(d.join("pins.max")).unwrap())),
        ];
        let mut limits = Limits::default();
        for (i, (name, make)) in cases.iter().enumerate() {
            let _ = fs::remove_file(&file);
            let _ = fs::remove_dir(&file);
            make();
            assert_eq!(read_max(&mut limits, d, previous), previous, "{name}");
            assert_eq!(read_max(&mut limits, d, previous), previous, "{name} again");
            assert_eq!(limits.errors, i as u64 + 1, "{name} is reported exactly once");
        }
        let reasons: Vec<&String> = limits.reported.values().collect();
        assert_eq!(reasons.len(), 1, "one file, its latest problem");
        assert!(reasons[0].contains("directory"));
    }

    #[test]
    fn the_node_budget_bounds_the_roots_own_limit() {
        assert_eq!(within(Limit::Max, Some(96 << 20)), Limit::Bytes(96 << 20));
        assert_eq!(within(Limit::Bytes(1 << 30), Some(96 << 20)), Limit::Bytes(96 << 20));
        assert_eq!(within(Limit::Bytes(64 << 20), Some(96 << 20)), Limit::Bytes(64 << 20));
        assert_eq!(within(Limit::Bytes(64 << 20), None), Limit::Bytes(64 << 20));
        assert_eq!(within(Limit::Max, None), Limit::Max);
    }

    #[test]
    fn new_mirror_files_are_seeded_with_the_limit_in_force_but_not_the_node_budget() {
        let vm = CgroupLimit { max: Limit::Bytes(16 << 20), high: Limit::Max, action: Action::Kill };
        let budget = CgroupLimit { max: Limit::Bytes(96 << 20), ..NO_LIMIT };
        let limits = Limits::resume(HashMap::from([(7, vm), (1, budget)]), Some(96 << 20));
        let row = |id, path: &str| CgroupRow { id, ..CgroupRow::sample(path, pincg_cgroup_spec::Source::Vfio, 0) };
        assert_eq!(limits.seed(&row(7, "vm")), vm);
        assert_eq!(limits.seed(&row(8, "new")), NO_LIMIT);
        assert_eq!(limits.seed(&row(1, "")), NO_LIMIT, "the budget applies anyway; the file keeps `max`");
        let tighter = CgroupLimit { max: Limit::Bytes(64 << 20), ..NO_LIMIT };
        let limits = Limits::resume(HashMap::from([(1, tighter)]), Some(96 << 20));
        assert_eq!(limits.seed(&row(1, "")), tighter, "a root limit below the budget was the file's");
    }

    #[test]
    fn errors_name_the_file() {
        let e = LimitFileError { path: "/run/pincg/cgroup/vm/pins.max".into(), reason: "bad".into() };
        assert_eq!(e.to_string(), "/run/pincg/cgroup/vm/pins.max: bad; the previous value stays in force");
    }
}
