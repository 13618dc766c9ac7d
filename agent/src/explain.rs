//! `pincg explain <pid|cgroup>`: which objects pin what — source, user
//! address range, bytes, pinner, charged cgroup, and since when.

use pincg_bpf::ledger::PinObject;
use pincg_cgroup_spec::format_human;
use serde_json::json;

use crate::cgroupfs::CgroupTree;

/// What to explain: a process, or a cgroup (and its descendants).
pub enum Subject {
    Pid(u32),
    Cgroup(String),
}

impl Subject {
    pub fn parse(text: &str) -> Subject {
        match text.parse() {
            Ok(pid) => Subject::Pid(pid),
            Err(_) => Subject::Cgroup(text.trim_matches('/').to_string()),
        }
    }
}

/// One object, with its cgroup's path resolved.
pub struct Explained<'a> {
    pub object: &'a PinObject,
    pub cgroup: String,
    /// Seconds since the pin was charged.
    pub age: f64,
}

/// The objects of `subject`, largest first.
pub fn select<'a>(objects: &'a [PinObject], tree: &CgroupTree, subject: &Subject, now_ns: u64) -> Vec<Explained<'a>> {
    let path_of = |id: u64| tree.path(id).map(|p| format!("/{p}"));
    let mut out: Vec<Explained<'a>> = objects
        .iter()
        .map(|o| Explained {
            object: o,
            cgroup: path_of(o.cgroup).unwrap_or_else(|| format!("(removed cgroup {})", o.cgroup)),
            age: now_ns.saturating_sub(o.since_ns) as f64 / 1e9,
        })
        .filter(|e| match subject {
            Subject::Pid(pid) => e.object.tgid == *pid,
            Subject::Cgroup(rel) if rel.is_empty() => true,
            Subject::Cgroup(rel) => {
                let wanted = format!("/{rel}");
                e.cgroup == wanted || e.cgroup.starts_with(&format!("{wanted}/"))
            }
        })
        .collect();
    out.sort_by(|a, b| b.object.bytes.cmp(&a.object.bytes).then(a.object.addr.cmp(&b.object.addr)));
    out
}

pub fn render_table(rows: &[Explained<'_>]) -> String {
    let mut out = format!(
        "{:<9} {:<35} {:>10} {:>8} {:<16} {:>9}  {}\n",
        "SOURCE", "USER ADDRESS RANGE", "BYTES", "PID", "COMM", "AGE", "CGROUP"
    );
    for e in rows {
        let o = e.object;
        out.push_str(&format!(
            "{:<9} {:<35} {:>10} {:>8} {:<16} {:>8.1}s  {}\n",
            o.source.key(),
            format!("{:#x}-{:#x}", o.addr, o.addr + o.bytes),
            format_human(o.bytes),
            o.tgid,
            o.comm,
            e.age,
            e.cgroup
        ));
    }
    let total: u64 = rows.iter().map(|e| e.object.bytes).sum();
    out.push_str(&format!("{} objects, {} pinned\n", rows.len(), format_human(total)));
    out
}

pub fn render_json(rows: &[Explained<'_>]) -> serde_json::Value {
    json!(rows
        .iter()
        .map(|e| json!({
            "source": e.object.source.key(), "object": format!("{:#x}", e.object.object),
            "addr": e.object.addr, "bytes": e.object.bytes, "pid": e.object.tgid,
            "comm": e.object.comm, "cgroup": e.cgroup, "age_seconds": e.age,
        }))
        .collect::<Vec<_>>())
}

/// CLOCK_BOOTTIME, the clock the ledger's `since_ns` uses.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use pincg_cgroup_spec::Source;

    use super::*;

    fn object(tgid: u32, cgroup: u64, bytes: u64) -> PinObject {
        PinObject {
            object: 0xffff_8880_0000_0000,
            source: Source::Vfio,
            bytes,
            addr: 0x7f00_0000_0000,
            since_ns: 1_000_000_000,
            cgroup,
            tgid,
            comm: "qemu".into(),
        }
    }

    #[test]
    fn selects_by_pid_or_cgroup_largest_first() {
        let objects = [object(10, 7, 4096), object(11, 8, 8192), object(10, 9, 16384)];
        let tree = CgroupTree::default();
        let by_pid = select(&objects, &tree, &Subject::parse("10"), 3_000_000_000);
        assert_eq!(by_pid.iter().map(|e| e.object.bytes).collect::<Vec<_>>(), [16384, 4096]);
        assert_eq!(by_pid[0].age, 2.0);
        assert_eq!(by_pid[0].cgroup, "(removed cgroup 9)");
        let all = select(&objects, &tree, &Subject::parse("/"), 3_000_000_000);
        assert_eq!(all.len(), 3);
        let table = render_table(&all);
        assert!(table.contains("vfio      0x7f0000000000-0x7f0000004000"), "{table}");
        assert!(table.ends_with("3 objects, 28.0 KiB pinned\n"));
    }
}
