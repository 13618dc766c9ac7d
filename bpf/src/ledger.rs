//! Reads the pinned ledger maps: what every cgroup has pinned, per source,
//! and every live pin object.

use std::mem::size_of;

use libbpf_rs::{MapCore, MapFlags, MapHandle};
use pincg_cgroup_spec::{PerSource, Source};

use crate::paths::PinPaths;
use crate::skel::io_uring::types;
use crate::Error;

/// Pinned bytes of one cgroup, per source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    /// The cgroup v2 id (the inode number of its directory).
    pub cgroup: u64,
    /// Charged to this cgroup itself.
    pub local: PerSource,
    /// Charged to this cgroup and its descendants.
    pub total: PerSource,
}

/// One live long-term pin object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinObject {
    pub object: u64,
    pub source: Source,
    pub bytes: u64,
    pub addr: u64,
    /// CLOCK_BOOTTIME nanoseconds at charge time.
    pub since_ns: u64,
    pub cgroup: u64,
    pub tgid: u32,
    pub comm: String,
}

/// Health counters kept by the BPF programs (`enum pincg_counter`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub ledger_full: u64,
    pub usage_full: u64,
    pub stale_objects: u64,
    pub unknown_releases: u64,
    pub charges: u64,
    pub releases: u64,
}

/// Handles on the pinned ledger maps.
pub struct Ledger {
    objects: MapHandle,
    usage: MapHandle,
    counters: MapHandle,
}

impl Ledger {
    /// Open the ledger a running (or previous) agent pinned.
    pub fn open(paths: &PinPaths) -> Result<Ledger, Error> {
        let open = |name: &str| {
            let path = paths.map(name);
            if !path.exists() {
                return Err(Error::NotRunning { path });
            }
            MapHandle::from_pinned_path(&path).map_err(|source| Error::Pinned { path, source })
        };
        Ok(Ledger { objects: open("objects")?, usage: open("usage")?, counters: open("counters")? })
    }

    /// Usage of every cgroup that has an entry.
    pub fn usage(&self) -> Result<Vec<CgroupUsage>, Error> {
        let mut out = Vec::new();
        for key in self.usage.keys() {
            let Some(value) = self.lookup(&self.usage, "usage", &key)? else { continue };
            let raw: types::cgroup_usage = decode("usage", &value)?;
            out.push(CgroupUsage {
                cgroup: decode::<u64>("usage", &key)?,
                local: PerSource(raw.local),
                total: PerSource(raw.total),
            });
        }
        Ok(out)
    }

    /// Every live pin object.
    pub fn objects(&self) -> Result<Vec<PinObject>, Error> {
        let mut out = Vec::new();
        for key in self.objects.keys() {
            let Some(value) = self.lookup(&self.objects, "objects", &key)? else { continue };
            let k: types::pin_key = decode("objects", &key)?;
            let v: types::pin_object = decode("objects", &value)?;
            let Some(source) = Source::from_id(k.source.0) else { continue };
            let comm: Vec<u8> = v.comm.iter().map(|c| *c as u8).take_while(|c| *c != 0).collect();
            out.push(PinObject {
                object: k.object,
                source,
                bytes: v.bytes,
                addr: v.addr,
                since_ns: v.since_ns,
                cgroup: v.cgroup,
                tgid: v.tgid,
                comm: String::from_utf8_lossy(&comm).into_owned(),
            });
        }
        Ok(out)
    }

    pub fn counters(&self) -> Result<Counters, Error> {
        let slot = |i: u32| -> Result<u64, Error> {
            match self.lookup(&self.counters, "counters", &i.to_ne_bytes())? {
                Some(v) => decode("counters", &v),
                None => Ok(0),
            }
        };
        Ok(Counters {
            ledger_full: slot(types::pincg_counter::PINCG_CNT_LEDGER_FULL.0)?,
            usage_full: slot(types::pincg_counter::PINCG_CNT_USAGE_FULL.0)?,
            stale_objects: slot(types::pincg_counter::PINCG_CNT_STALE_OBJECT.0)?,
            unknown_releases: slot(types::pincg_counter::PINCG_CNT_UNKNOWN_RELEASE.0)?,
            charges: slot(types::pincg_counter::PINCG_CNT_CHARGES.0)?,
            releases: slot(types::pincg_counter::PINCG_CNT_RELEASES.0)?,
        })
    }

    /// Drop the usage entry of a cgroup that no longer exists and has
    /// nothing charged. (No task can charge a removed cgroup, and with no
    /// objects left nothing can release to it, so this cannot race.)
    pub fn forget_cgroup(&self, cgroup: u64) -> Result<(), Error> {
        match self.usage.delete(&cgroup.to_ne_bytes()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Pinned { path: "usage".into(), source }),
        }
    }

    fn lookup(&self, map: &MapHandle, name: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        map.lookup(key, MapFlags::ANY)
            .map_err(|source| Error::Pinned { path: name.into(), source })
    }
}

/// Read a plain-old-data value of `T` from a map's bytes.
fn decode<T: Copy>(map: &'static str, bytes: &[u8]) -> Result<T, Error> {
    if bytes.len() != size_of::<T>() {
        return Err(Error::EntrySize { map, found: bytes.len(), expected: size_of::<T>() });
    }
    // SAFETY: the length matches and T is a C struct of integers generated
    // from the BPF object's BTF, valid for any bit pattern.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_sources_match_the_interface_spec() {
        use types::pincg_source as c;
        let pairs = [
            (c::PINCG_SRC_VFIO, Source::Vfio),
            (c::PINCG_SRC_IOMMUFD, Source::Iommufd),
            (c::PINCG_SRC_RDMA, Source::Rdma),
            (c::PINCG_SRC_IO_URING, Source::IoUring),
            (c::PINCG_SRC_XDP, Source::Xdp),
            (c::PINCG_SRC_OTHER, Source::Other),
        ];
        for (c_value, source) in pairs {
            assert_eq!(c_value.0, source as u32, "{}", source.key());
        }
        assert_eq!(c::PINCG_NR_SOURCES.0 as usize, Source::ALL.len());
    }

    #[test]
    fn decode_checks_the_size() {
        assert_eq!(decode::<u64>("usage", &42u64.to_ne_bytes()).unwrap(), 42);
        let err = decode::<u64>("usage", &[0u8; 4]).unwrap_err();
        assert_eq!(err.to_string(), "map usage: entry of 4 bytes, expected 8");
    }
}
