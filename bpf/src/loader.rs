//! Loads the BPF objects, attaches their programs and pins links and shared
//! maps under the pin root, so the ledger outlives the agent.
//!
//! A source whose links are already pinned (a previous agent loaded it) is
//! adopted as it is: its programs kept running while no agent was up, and
//! the maps they write are the ones this agent reads.

use std::fs;
use std::io::ErrorKind;
use std::mem::MaybeUninit;
use std::path::Path;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, Object, OpenObject};
use pincg_cgroup_spec::Source;
use serde_json::json;

use crate::hooks::{self, FunctionCatalog, KernelBtf, SourceHooks, Variant};
use crate::paths::{PinPaths, SHARED_MAPS};
use crate::skel;
use crate::Error;

/// How a hook stands on this kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookState {
    /// Attached by this agent.
    Attached,
    /// Found attached and pinned by a previous agent, and kept.
    Adopted,
    /// Not attached; the reason names the function or error.
    Unavailable(String),
}

/// One hook's program and state, for `pincg probe` and the metrics.
#[derive(Debug, Clone)]
pub struct HookStatus {
    pub hook: &'static str,
    pub source: Source,
    pub program: Option<&'static str>,
    pub state: HookState,
}

impl HookStatus {
    pub fn is_live(&self) -> bool {
        matches!(self.state, HookState::Attached | HookState::Adopted)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let (state, reason) = match &self.state {
            HookState::Attached => ("attached", None),
            HookState::Adopted => ("adopted", None),
            HookState::Unavailable(r) => ("unavailable", Some(r.as_str())),
        };
        json!({"hook": self.hook, "source": self.source.key(), "program": self.program,
               "state": state, "reason": reason})
    }
}

/// Load every source whose hooks exist on this kernel. Sources that cannot
/// attach are reported, not fatal; a ledger that cannot be created or
/// reused is.
pub fn load_all(paths: &PinPaths) -> Result<Vec<HookStatus>, Error> {
    quiet_libbpf();
    for dir in [paths.maps_dir(), paths.links_dir()] {
        fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
    }
    let kernel = KernelBtf::load()?;
    let mut statuses = Vec::new();
    for source in hooks::ALL_SOURCES {
        statuses.extend(load_source(source, &kernel, paths)?);
    }
    Ok(statuses)
}

/// What `load_all` would do, without loading anything: the variant chosen
/// per hook, or why there is none.
pub fn probe(kernel: &dyn FunctionCatalog) -> Vec<HookStatus> {
    hooks::ALL_SOURCES
        .iter()
        .flat_map(|source| match hooks::select(source, kernel) {
            Ok(chosen) => statuses(source, &chosen, HookState::Attached),
            Err(e) => unavailable(source, e.to_string()),
        })
        .collect()
}

fn load_source(source: &'static SourceHooks, kernel: &KernelBtf, paths: &PinPaths) -> Result<Vec<HookStatus>, Error> {
    let chosen = match hooks::select(source, kernel) {
        Ok(chosen) => chosen,
        Err(e) => return Ok(unavailable(source, e.to_string())),
    };
    let mut programs: Vec<&str> = chosen.iter().flat_map(|v| v.programs()).collect();
    programs.dedup();
    if programs.iter().all(|p| paths.link(p).exists()) {
        return Ok(statuses(source, &chosen, HookState::Adopted));
    }
    // A partial set of links (an agent died while attaching): start over.
    for program in &programs {
        remove_pin(&paths.link(program))?;
    }
    match source.source {
        Source::IoUring => {
            let mut storage = MaybeUninit::uninit();
            let mut open = skel::io_uring::IoUringSkelBuilder::default()
                .open(&mut storage)
                .map_err(|e| Error::Load { object: source.object, source: e })?;
            prepare(open.open_object_mut(), &chosen, paths)?;
            let loaded = open.load().map_err(|e| Error::Load { object: source.object, source: e })?;
            attach_and_pin(source, loaded.object(), &chosen, paths)
        }
        other => unreachable!("no BPF object is registered for source {}", other.key()),
    }
}

/// Load only the chosen variants; share the ledger maps through their pins.
fn prepare(open: &mut OpenObject, chosen: &[&Variant], paths: &PinPaths) -> Result<(), Error> {
    for mut prog in open.progs_mut() {
        let name = prog.name().to_string_lossy().into_owned();
        prog.set_autoload(chosen.iter().flat_map(|v| v.programs()).any(|p| p == name));
    }
    for mut map in open.maps_mut() {
        let name = map.name().to_string_lossy().into_owned();
        if SHARED_MAPS.contains(&name.as_str()) {
            let path = paths.map(&name);
            map.set_pin_path(&path).map_err(|source| Error::Pinned { path, source })?;
        }
    }
    Ok(())
}

/// Attach every chosen program, then pin all links; a failed attach leaves
/// nothing of this source behind and marks its hooks unavailable.
fn attach_and_pin(
    source: &SourceHooks,
    object: &Object,
    chosen: &[&'static Variant],
    paths: &PinPaths,
) -> Result<Vec<HookStatus>, Error> {
    let mut links: Vec<(&str, Link)> = Vec::new();
    for target in chosen.iter().flat_map(|v| v.attach.iter()) {
        let prog = object
            .progs_mut()
            .find(|p| p.name() == target.program)
            .expect("chosen variants come from this object's programs");
        match prog.attach() {
            Ok(link) => links.push((target.program, link)),
            Err(e) => {
                let reason = format!("attaching {} to {}: {e}", target.program, target.function);
                return Ok(unavailable(source, reason));
            }
        }
    }
    for (program, link) in &mut links {
        let path = paths.link(program);
        link.pin(&path).map_err(|source| Error::Pinned { path, source })?;
    }
    Ok(statuses(source, chosen, HookState::Attached))
}

/// Remove everything pincg pinned: programs detach, the ledger is dropped.
pub fn unload(paths: &PinPaths) -> Result<(), Error> {
    for dir in [paths.links_dir(), paths.maps_dir()] {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(source) => return Err(Error::Io { path: dir, source }),
        };
        for entry in entries.flatten() {
            remove_pin(&entry.path())?;
        }
        remove_pin(&dir)?;
    }
    remove_pin(paths.root())
}

fn remove_pin(path: &Path) -> Result<(), Error> {
    let result = if path.is_dir() { fs::remove_dir(path) } else { fs::remove_file(path) };
    match result {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(Error::Io { path: path.into(), source: e }),
        _ => Ok(()),
    }
}

fn hook_of(source: &SourceHooks, variant: &Variant) -> &'static str {
    source
        .hooks
        .iter()
        .find(|h| h.variants.contains(variant))
        .map(|h| h.name)
        .expect("a variant belongs to one hook")
}

fn statuses(source: &SourceHooks, chosen: &[&'static Variant], state: HookState) -> Vec<HookStatus> {
    chosen
        .iter()
        .map(|v| HookStatus {
            hook: hook_of(source, v),
            source: source.source,
            program: Some(v.primary()),
            state: state.clone(),
        })
        .collect()
}

fn unavailable(source: &SourceHooks, reason: String) -> Vec<HookStatus> {
    source
        .hooks
        .iter()
        .map(|h| HookStatus {
            hook: h.name,
            source: source.source,
            program: None,
            state: HookState::Unavailable(reason.clone()),
        })
        .collect()
}

/// libbpf's own messages are multi-line dumps; pincg reports errors itself
/// in one line. `PINCG_LIBBPF_DEBUG=1` shows them for debugging.
fn quiet_libbpf() {
    if std::env::var_os("PINCG_LIBBPF_DEBUG").is_none() {
        libbpf_rs::set_print(None);
    }
}
