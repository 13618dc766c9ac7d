//! Whole-map reads through BPF map iterators (`src/bpf/reader.bpf.c`).
//!
//! A map syscall holds the CPU's `bpf_prog_active` for as long as it walks
//! the map (a batch lookup of a sparse hash walks every bucket), and the
//! kernel skips every kprobe program on that CPU meanwhile. A reader
//! preempted inside one by a task that pins or releases made the ledger miss
//! that task's charge or release (the `escape` scenario lost io_uring
//! releases this way, with `program_skipped` in the thousands). Iterators
//! run without `bpf_prog_active`, so reading the ledger blinds nothing.

use std::io::Read;
use std::os::fd::AsFd;

use libbpf_rs::{Iter, Link, MapCore, MapHandle};

use crate::paths::{PinPaths, SHARED_MAPS};
use crate::Error;

/// The reader's BPF object: not a pin source, so it has no registry entry.
pub(crate) const OBJECT: &str = "reader";

/// A map's entries as raw (key, value) bytes.
pub(crate) type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// One iterator link per map read whole, by map name.
pub(crate) struct Reader {
    links: Vec<(String, Link)>,
}

impl Reader {
    /// Load the iterators on the pinned maps under `paths` (they must all
    /// exist: the reader never creates a ledger map).
    pub(crate) fn load(paths: &PinPaths) -> Result<Reader, Error> {
        let object_error = |source| Error::ReaderLoad { source };
        let mut open = crate::loader::open_object(OBJECT).map_err(object_error)?;
        let mut pinned = Vec::new();
        for mut map in open.maps_mut() {
            let name = map.name().to_string_lossy().into_owned();
            if !SHARED_MAPS.contains(&name.as_str()) {
                continue;
            }
            let path = paths.map(&name);
            if !path.exists() {
                return Err(Error::NotRunning { path });
            }
            let handle =
                MapHandle::from_pinned_path(&path).map_err(|source| Error::Pinned { path: path.clone(), source })?;
            map.reuse_fd(handle.as_fd()).map_err(|source| Error::Pinned { path: path.clone(), source })?;
            pinned.push((name, handle));
        }
        let object = open.load().map_err(object_error)?;
        let mut links = Vec::new();
        for (name, handle) in &pinned {
            let Some(prog) = object.progs_mut().find(|p| p.name().to_str() == Some(&format!("read_{name}"))) else {
                continue;
            };
            let link = prog.attach_iter(handle.as_fd()).map_err(object_error)?;
            links.push((name.clone(), link));
        }
        Ok(Reader { links })
    }

    /// Every entry of `map` (named `name`), as (key, value) bytes.
    pub(crate) fn entries(&self, map: &MapHandle, name: &'static str) -> Result<Entries, Error> {
        let read_error = |source| Error::Reader { map: name, source };
        let (_, link) = self.links.iter().find(|(n, _)| n == name).expect("reader.bpf.c reads every map read whole");
        let mut bytes = Vec::new();
        Iter::new(link).map_err(read_error)?.read_to_end(&mut bytes).map_err(|e| read_error(e.into()))?;
        let (key_size, value_size) = (map.key_size() as usize, map.value_size() as usize);
        let record = key_size + value_size;
        if bytes.len() % record != 0 {
            return Err(Error::EntrySize { map: name, found: bytes.len() % record, expected: record });
        }
        // A hash map's iterator resumes each read(2) at (bucket, position
        // in it): an entry added or removed meanwhile in that bucket can
        // show an entry twice. The first copy is kept.
        let mut seen = std::collections::HashSet::new();
        Ok(bytes
            .chunks_exact(record)
            .filter(|r| seen.insert(&r[..key_size]))
            .map(|r| (r[..key_size].to_vec(), r[key_size..].to_vec()))
            .collect())
    }
}
