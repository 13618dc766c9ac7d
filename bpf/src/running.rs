//! The programs a previous agent left running behind its pinned links, and
//! the maps those programs use: what an upgrade replaces, and the per-object
//! state (in-flight maps, globals) the new programs must share with them.

use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use libbpf_rs::libbpf_sys;
use libbpf_rs::query::{LinkInfo, LinkTypeInfo};
use libbpf_rs::{Link, MapCore, MapFlags, MapHandle, MapType};

use crate::Error;

/// Kernel object names are cut to 15 bytes (BPF_OBJ_NAME_LEN - 1).
const NAME_LEN: usize = 15;

/// One pinned link of a running source.
pub struct RunningLink {
    pub name: String,
    pub link: Link,
    /// Cgroup links can swap their program in place (BPF_LINK_UPDATE).
    pub updatable: bool,
}

/// The links of one source as a previous agent pinned them, and every map
/// their programs use, by kernel name.
pub struct Running {
    pub links: Vec<RunningLink>,
    maps: Vec<(String, MapHandle)>,
}

impl Running {
    /// Open the links pinned at `links_dir/<name>` for every name.
    pub fn open(links_dir: &Path, names: &[String]) -> Result<Running, Error> {
        let mut links = Vec::new();
        let mut maps: Vec<(String, MapHandle)> = Vec::new();
        for name in names {
            let path = links_dir.join(name);
            let pinned = |source| Error::Pinned { path: path.clone(), source };
            let link = Link::open(&path).map_err(pinned)?;
            let info = LinkInfo::from_fd(link.as_fd()).map_err(pinned)?;
            for id in map_ids(info.prog_id).map_err(|e| pinned(e.into()))? {
                if maps.iter().any(|(_, m)| m.info().is_ok_and(|i| i.info.id == id)) {
                    continue;
                }
                let map = MapHandle::from_map_id(id).map_err(pinned)?;
                let kernel_name = map.info().map_err(pinned)?.name().unwrap_or_default().to_string();
                maps.push((kernel_name, map));
            }
            let updatable = matches!(info.info, LinkTypeInfo::Cgroup(_));
            links.push(RunningLink { name: name.clone(), link, updatable });
        }
        Ok(Running { links, maps })
    }

    /// The map the running programs know as `name` (libbpf's name, which
    /// the kernel keeps cut to 15 bytes).
    pub fn map(&self, name: &str) -> Option<&MapHandle> {
        let cut = &name.as_bytes()[..name.len().min(NAME_LEN)];
        self.maps.iter().find(|(n, _)| n.as_bytes() == cut).map(|(_, m)| m)
    }

    pub fn link(&self, name: &str) -> Option<&RunningLink> {
        self.links.iter().find(|l| l.name == name)
    }

    /// Wait (at most `limit`) until every entry now in the running
    /// programs' own hash maps (not the `shared` ones) is gone or changed: a
    /// task that entered a hooked function before the new programs were
    /// attached returns through the old return probe only, which must still
    /// be there. Entries left at the limit are of tasks stuck in the kernel
    /// (or whose return the kernel missed); the new programs take them.
    pub fn drain(&self, shared: &[&str], limit: Duration) {
        let hashes = self.maps.iter().filter(|(n, m)| !shared.contains(&n.as_str()) && m.map_type() == MapType::Hash);
        let pending: Vec<(&MapHandle, Vec<u8>, Vec<u8>)> = hashes
            .flat_map(|(_, m)| m.keys().filter_map(move |k| Some((m, m.lookup(&k, MapFlags::ANY).ok()??, k))))
            .map(|(m, v, k)| (m, k, v))
            .collect();
        let start = Instant::now();
        loop {
            let left = pending
                .iter()
                .filter(|(m, k, v)| m.lookup(k, MapFlags::ANY).ok().flatten().as_ref() == Some(v))
                .count();
            if left == 0 || start.elapsed() >= limit {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The ids of the maps program `prog_id` uses.
fn map_ids(prog_id: u32) -> std::io::Result<Vec<u32>> {
    // SAFETY: returns a new fd, or -errno.
    let raw = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(prog_id) };
    if raw < 0 {
        return Err(std::io::Error::from_raw_os_error(-raw));
    }
    // SAFETY: a new fd nothing else owns.
    let prog = unsafe { OwnedFd::from_raw_fd(raw) };
    let info = |ids: &mut Vec<u32>| -> std::io::Result<u32> {
        // SAFETY: zeroed is a valid bpf_prog_info.
        let mut info: libbpf_sys::bpf_prog_info = unsafe { zeroed() };
        info.nr_map_ids = ids.len() as u32;
        info.map_ids = ids.as_mut_ptr() as u64;
        let mut len = size_of::<libbpf_sys::bpf_prog_info>() as u32;
        // SAFETY: info, len and the ids buffer (nr_map_ids long) are live.
        let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &mut info, &mut len) };
        if rc < 0 {
            return Err(std::io::Error::from_raw_os_error(-rc));
        }
        Ok(info.nr_map_ids)
    };
    let mut ids = Vec::new();
    let count = info(&mut ids)?;
    ids.resize(count as usize, 0);
    info(&mut ids)?;
    Ok(ids)
}
