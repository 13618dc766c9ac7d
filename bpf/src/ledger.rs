//! Reads the pinned ledger maps: what every cgroup has pinned, per source,
//! and every live pin object.

use std::collections::HashMap;
use std::mem::size_of;
use std::sync::OnceLock;

use libbpf_rs::{MapCore, MapFlags, MapHandle};
use pincg_cgroup_spec::{Action, Events, Limit, PerSource, Source};

use crate::paths::PinPaths;
use crate::reader::Reader;
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
    /// Unique bytes of this cgroup and its descendants (`pins.current`):
    /// pages pinned by several objects of one process count once.
    pub pinned: u64,
    /// The highest `pinned` seen (`pins.peak`).
    pub peak: u64,
    /// Events at this cgroup's own limits (`pins.events.local`).
    pub events: Events,
}

/// One cgroup's limits as the BPF programs enforce them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimit {
    pub max: Limit,
    pub high: Limit,
    pub action: Action,
}

/// Enforcement mode (`enum pincg_mode`), defined with the spec.
pub use pincg_cgroup_spec::Mode;

/// Refusals and overruns of one source (`struct source_actions`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceActions {
    pub refused: u64,
    pub would_refuse: u64,
    pub overruns: u64,
    pub killed: u64,
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
    /// Deduplication entries that could not be made (pages counted as new).
    pub spans_full: u64,
    /// Requests of limited cgroups that found the requests map full
    /// (refused in enforce mode, let through unreserved in monitor mode).
    pub requests_full: u64,
    /// Requests of limited cgroups that found the ledger without room for
    /// their objects (the last eighth of `objects` is for unlimited ones).
    pub ledger_room: u64,
}

impl Counters {
    /// Pin objects in the ledger now: every recorded charge not released.
    pub fn live_objects(&self) -> u64 {
        self.charges.saturating_sub(self.releases)
    }
}

/// Handles on the pinned ledger, limit and settings maps.
pub struct Ledger {
    objects: MapHandle,
    usage: MapHandle,
    counters: MapHandle,
    limits: MapHandle,
    settings: MapHandle,
    actions: MapHandle,
    paths: PinPaths,
    reader: OnceLock<Reader>,
}

impl Ledger {
    /// Open the ledger a running (or previous) agent pinned; a map whose
    /// layout is not this build's is refused, not misread.
    pub fn open(paths: &PinPaths) -> Result<Ledger, Error> {
        let open = |name: &str| {
            let path = paths.map(name);
            if !path.exists() {
                return Err(Error::NotRunning { path });
            }
            let map =
                MapHandle::from_pinned_path(&path).map_err(|source| Error::Pinned { path: path.clone(), source })?;
            crate::loader::check_shared(name, &map, &path)?;
            Ok(map)
        };
        Ok(Ledger {
            objects: open("objects")?,
            usage: open("usage")?,
            counters: open("counters")?,
            limits: open("limits")?,
            settings: open("settings")?,
            actions: open("actions")?,
            paths: paths.clone(),
            reader: OnceLock::new(),
        })
    }

    /// Usage of every cgroup that has an entry.
    pub fn usage(&self) -> Result<Vec<CgroupUsage>, Error> {
        Ok(self.usage_and_reserve()?.0)
    }

    /// Usage of every cgroup that has an entry, and the slots of the
    /// usage map's reserve that hold a placeholder now (see
    /// [`Ledger::keep_reserve`]).
    pub fn usage_and_reserve(&self) -> Result<(Vec<CgroupUsage>, Vec<u64>), Error> {
        let mut out = Vec::new();
        let mut reserve = Vec::new();
        for (key, value) in self.reader()?.entries(&self.usage, "usage")? {
            let cgroup = decode::<u64>("usage", &key)?;
            if cgroup & RESERVE_KEY != 0 {
                reserve.push(cgroup & !RESERVE_KEY);
                continue;
            }
            let raw: types::cgroup_usage = decode("usage", &value)?;
            out.push(CgroupUsage {
                cgroup,
                local: PerSource(raw.local),
                total: PerSource(raw.total),
                pinned: raw.pinned,
                peak: raw.peak,
                events: Events { high: raw.events_high, max: raw.events_max },
            });
        }
        Ok((out, reserve))
    }

    /// Slots of the usage map the BPF programs cannot fill: the last
    /// eighth of it holds placeholder entries (keys no cgroup has), which
    /// only the agent removes, to make the entry of a cgroup it gives a
    /// limit. So a tenant that makes thousands of cgroups and pins in each
    /// fills the map only up to the reserve, and a limit set afterwards
    /// still finds room for the entry it is checked against (without one,
    /// every request of that cgroup would be refused).
    pub fn reserve_size(&self) -> u64 {
        u64::from(self.usage.max_entries() / 8)
    }

    /// Put back the placeholders missing from the reserve (`present`: the
    /// slots [`Ledger::usage_and_reserve`] found), until the map is full;
    /// returns how many are still missing then.
    pub fn keep_reserve(&self, present: &[u64]) -> Result<u64, Error> {
        let present: std::collections::HashSet<u64> = present.iter().copied().collect();
        let missing: Vec<u64> = (0..self.reserve_size()).filter(|s| !present.contains(s)).collect();
        for (made, slot) in missing.iter().enumerate() {
            match self.make_usage(RESERVE_KEY | slot) {
                Ok(_) => {}
                Err(e) if is_full(&e) => return Ok((missing.len() - made) as u64),
                Err(source) => return Err(Error::Pinned { path: "usage".into(), source }),
            }
        }
        Ok(0)
    }

    /// Make `cgroup`'s usage entry unless it has one, taking a slot of the
    /// reserve when the map is full.
    fn ensure_usage(&self, cgroup: u64) -> Result<(), Error> {
        let mut slots = 0..self.reserve_size();
        loop {
            match self.make_usage(cgroup) {
                Ok(_) => return Ok(()),
                // A program may take the freed slot first: then the next.
                Err(e) if is_full(&e) => match slots.next() {
                    Some(slot) => drop(self.usage.delete(&(RESERVE_KEY | slot).to_ne_bytes())),
                    None => return Err(Error::UsageFull { cgroup, capacity: self.usage.max_entries(), source: e }),
                },
                Err(source) => return Err(Error::Pinned { path: "usage".into(), source }),
            }
        }
    }

    /// Add a zeroed usage entry for `cgroup`: true if made, false if it
    /// had one.
    fn make_usage(&self, cgroup: u64) -> libbpf_rs::Result<bool> {
        let zero = types::cgroup_usage::default();
        match self.usage.update(&cgroup.to_ne_bytes(), as_bytes(&zero), MapFlags::NO_EXIST) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every live pin object.
    pub fn objects(&self) -> Result<Vec<PinObject>, Error> {
        let mut out = Vec::new();
        for (key, value) in self.reader()?.entries(&self.objects, "objects")? {
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
        let mut slots = HashMap::new();
        for (key, value) in self.reader()?.entries(&self.counters, "counters")? {
            slots.insert(decode::<u32>("counters", &key)?, decode::<u64>("counters", &value)?);
        }
        let slot = |i: u32| -> Result<u64, Error> { Ok(slots.get(&i).copied().unwrap_or(0)) };
        Ok(Counters {
            ledger_full: slot(types::pincg_counter::PINCG_CNT_LEDGER_FULL.0)?,
            usage_full: slot(types::pincg_counter::PINCG_CNT_USAGE_FULL.0)?,
            stale_objects: slot(types::pincg_counter::PINCG_CNT_STALE_OBJECT.0)?,
            unknown_releases: slot(types::pincg_counter::PINCG_CNT_UNKNOWN_RELEASE.0)?,
            charges: slot(types::pincg_counter::PINCG_CNT_CHARGES.0)?,
            releases: slot(types::pincg_counter::PINCG_CNT_RELEASES.0)?,
            spans_full: slot(types::pincg_counter::PINCG_CNT_SPANS_FULL.0)?,
            requests_full: slot(types::pincg_counter::PINCG_CNT_REQUESTS_FULL.0)?,
            ledger_room: slot(types::pincg_counter::PINCG_CNT_LEDGER_ROOM.0)?,
        })
    }

    /// Put `limit` in force for `cgroup`; a limit of `max`/`max` with the
    /// default action removes the entry (no limit costs nothing). A limited
    /// cgroup gets its usage entry first, from the reserve if need be.
    pub fn set_limit(&self, cgroup: u64, limit: &CgroupLimit) -> Result<(), Error> {
        let key = cgroup.to_ne_bytes();
        if limit.max == Limit::Max && limit.high == Limit::Max {
            return delete(&self.limits, "limits", cgroup);
        }
        self.ensure_usage(cgroup)?;
        let bytes = |l: Limit| match l {
            Limit::Bytes(b) => b,
            Limit::Max => u64::MAX,
        };
        let value = types::cgroup_limit {
            max: bytes(limit.max),
            high: bytes(limit.high),
            action: types::pincg_action(limit.action as u32),
            pad: 0,
        };
        self.limits
            .update(&key, as_bytes(&value), MapFlags::ANY)
            .map_err(|source| Error::Pinned { path: "limits".into(), source })
    }

    /// Entries each map can hold (its max_entries): objects, usage, limits.
    pub fn capacity(&self) -> Vec<(&'static str, u32)> {
        vec![
            ("objects", self.objects.max_entries()),
            ("usage", self.usage.max_entries()),
            ("limits", self.limits.max_entries()),
        ]
    }

    /// Every limit in force, by cgroup id.
    pub fn limits(&self) -> Result<HashMap<u64, CgroupLimit>, Error> {
        let mut out = HashMap::new();
        for (key, value) in self.reader()?.entries(&self.limits, "limits")? {
            let raw: types::cgroup_limit = decode("limits", &value)?;
            let limit = |b: u64| if b == u64::MAX { Limit::Max } else { Limit::Bytes(b) };
            let action = match raw.action.0 {
                1 => Action::Kill,
                2 => Action::Freeze,
                _ => Action::Alert,
            };
            out.insert(
                decode::<u64>("limits", &key)?,
                CgroupLimit { max: limit(raw.max), high: limit(raw.high), action },
            );
        }
        Ok(out)
    }

    pub fn mode(&self) -> Result<Mode, Error> {
        let value = self.lookup(&self.settings, "settings", &0u32.to_ne_bytes())?;
        let raw: types::pincg_config = value.map(|v| decode("settings", &v)).transpose()?.unwrap_or_default();
        Ok(if raw.mode == types::pincg_mode::PINCG_MODE_ENFORCE { Mode::Enforce } else { Mode::Monitor })
    }

    /// Switch mode at once; the ledger and limits are untouched.
    pub fn set_mode(&self, mode: Mode) -> Result<(), Error> {
        let value = types::pincg_config {
            mode: match mode {
                Mode::Monitor => types::pincg_mode::PINCG_MODE_MONITOR,
                Mode::Enforce => types::pincg_mode::PINCG_MODE_ENFORCE,
            },
            pad: 0,
        };
        self.settings
            .update(&0u32.to_ne_bytes(), as_bytes(&value), MapFlags::ANY)
            .map_err(|source| Error::Pinned { path: "settings".into(), source })
    }

    /// Refusals and overruns, per source.
    pub fn actions(&self) -> Result<Vec<(Source, SourceActions)>, Error> {
        let mut found = HashMap::new();
        for (key, value) in self.reader()?.entries(&self.actions, "actions")? {
            found.insert(decode::<u32>("actions", &key)?, decode::<types::source_actions>("actions", &value)?);
        }
        Ok(Source::ALL
            .iter()
            .map(|s| {
                let raw = found.get(&(*s as u32)).copied().unwrap_or_default();
                let actions = SourceActions {
                    refused: raw.refused,
                    would_refuse: raw.would_refuse,
                    overruns: raw.overruns,
                    killed: raw.killed,
                };
                (*s, actions)
            })
            .collect())
    }

    /// Drop the usage entry of a cgroup that no longer exists and has
    /// nothing charged. (No task can charge a removed cgroup, and with no
    /// objects left nothing can release to it, so this cannot race.)
    pub fn forget_cgroup(&self, cgroup: u64) -> Result<(), Error> {
        delete(&self.usage, "usage", cgroup)
    }

    /// Drop the limit of a cgroup that no longer exists.
    pub fn forget_limit(&self, cgroup: u64) -> Result<(), Error> {
        delete(&self.limits, "limits", cgroup)
    }

    /// The iterators that read maps whole, loaded on first use (writers
    /// such as `pincg set` never need them).
    fn reader(&self) -> Result<&Reader, Error> {
        if let Some(reader) = self.reader.get() {
            return Ok(reader);
        }
        let reader = Reader::load(&self.paths)?;
        Ok(self.reader.get_or_init(|| reader))
    }

    fn lookup(&self, map: &MapHandle, name: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        map.lookup(key, MapFlags::ANY).map_err(|source| Error::Pinned { path: name.into(), source })
    }
}

/// Usage keys with this bit are the reserve's placeholders: cgroup ids are
/// kernfs ids (inode number, generation above it), far below 2^63.
const RESERVE_KEY: u64 = 1 << 63;

/// A hash map's "no room" (E2BIG from a full preallocated map).
fn is_full(e: &libbpf_rs::Error) -> bool {
    e.kind() == libbpf_rs::ErrorKind::TooBig
}

/// Delete the entry of `cgroup` from a map keyed by cgroup id; one that is
/// not there is no error.
fn delete(map: &MapHandle, name: &'static str, cgroup: u64) -> Result<(), Error> {
    match map.delete(&cgroup.to_ne_bytes()) {
        Err(e) if e.kind() != libbpf_rs::ErrorKind::NotFound => Err(Error::Pinned { path: name.into(), source: e }),
        _ => Ok(()),
    }
}

/// The bytes of a plain-old-data value, to write into a map.
fn as_bytes<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: T is a C struct of integers generated from BTF; every byte is
    // initialised (explicit padding fields).
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
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
