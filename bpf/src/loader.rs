//! Loads the BPF objects, attaches their programs and pins links and shared
//! maps under the pin root, so the ledger outlives the agent.
//!
//! A source whose links are already pinned (a previous agent loaded it) is
//! adopted as it is when its programs come from this very build (the hash
//! of the BPF object, recorded under `builds/`): they kept running while no
//! agent was up, and the maps they write are the ones this agent reads.
//! Programs of another build are replaced without dropping the ledger (see
//! docs/architecture.md, "Pinning, restart and upgrades"): the new object reuses the pinned maps
//! and the old programs' in-flight maps and globals, its programs are
//! attached next to the old ones, and the old links go only then. A map
//! whose layout differs is refused before anything changes.
//!
//! Sources in modules (vfio_iommu_type1, ib_uverbs, ib_core, vduse) are loaded when
//! the module appears; [`refresh`] is called periodically for that. Their
//! links are pinned as `<program>@<module instance>` so that links of a
//! module that was unloaded and loaded again are recognised as stale and
//! replaced.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use std::os::fd::AsFd;
use std::time::Duration;

use libbpf_rs::{Link, MapCore, MapHandle, Object, ObjectBuilder, OpenObject};
use pincg_cgroup_spec::Source;
use serde_json::json;

use crate::btf::KernelBtf;
use crate::hooks::{self, FunctionCatalog, SourceHooks, Variant};
use crate::layout::{self, Btf, MapLayout};
use crate::paths::{PinPaths, SHARED_MAPS};
use crate::running::Running;
use crate::Error;

mod objects {
    include!(concat!(env!("OUT_DIR"), "/objects.rs"));
}

/// How long the old programs stay attached, at most, for tasks that were
/// inside a hooked function when the new ones were attached.
const DRAIN: Duration = Duration::from_secs(2);

/// Prefix of a new link's pin before it is renamed over the old one (the
/// BPF filesystem refuses dots in names).
const STAGED: &str = "~";

/// How a hook stands on this kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookState {
    /// Attached by this agent.
    Attached,
    /// Found attached and pinned by a previous agent of this build, and kept.
    Adopted,
    /// Programs of another pincg build were replaced by this build's; the
    /// ledger and limits were kept.
    Upgraded,
    /// Programs of another build are kept running: the kernel refused this
    /// build's (the reason says why).
    KeptPrevious(String),
    /// Its module is not loaded; it attaches when the module appears.
    WaitingForModule(&'static str),
    /// Not attached; the reason names the function or error.
    Unavailable(String),
}

/// One hook's program and state, for `pincg probe` and the metrics.
#[derive(Debug, Clone)]
pub struct HookStatus {
    pub hook: &'static str,
    pub source: Source,
    pub program: Option<&'static str>,
    /// The kernel change the chosen variant serves, for hooks with several
    /// (`hooks::Variant::change`).
    pub change: Option<&'static str>,
    pub state: HookState,
}

impl HookStatus {
    pub fn is_live(&self) -> bool {
        matches!(
            self.state,
            HookState::Attached | HookState::Adopted | HookState::Upgraded | HookState::KeptPrevious(_)
        )
    }

    /// The state in words, for logs and `pincg probe`.
    pub fn describe(&self) -> String {
        match &self.state {
            HookState::Attached => "attached".into(),
            HookState::Adopted => "adopted from a previous agent".into(),
            HookState::Upgraded => "replaced the programs of another pincg build, ledger kept".into(),
            HookState::KeptPrevious(reason) => format!("kept the programs of another pincg build: {reason}"),
            HookState::WaitingForModule(m) => format!("waiting for module {m}"),
            HookState::Unavailable(reason) => format!("unavailable: {reason}"),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let (state, reason) = match &self.state {
            HookState::Attached => ("attached", None),
            HookState::Adopted => ("adopted", None),
            HookState::Upgraded => ("upgraded", None),
            HookState::KeptPrevious(r) => ("kept_previous", Some(r.clone())),
            HookState::WaitingForModule(m) => ("waiting_for_module", Some(m.to_string())),
            HookState::Unavailable(r) => ("unavailable", Some(r.clone())),
        };
        json!({"hook": self.hook, "source": self.source.key(), "program": self.program,
               "variant_for": self.change, "state": state, "reason": reason})
    }
}

/// Capacity of a ledger created by this load: its `objects` map (live pin
/// objects) and its `usage` map (cgroups with pins or a limit); `None`
/// keeps the compiled size (`PINCG_MAX_OBJECTS`, `PINCG_MAX_CGROUPS`). A
/// ledger already pinned keeps the capacity it was created with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerCapacity {
    pub objects: Option<u32>,
    pub cgroups: Option<u32>,
}

impl LedgerCapacity {
    /// What a new ledger's map `name` is sized to, if this load sizes it.
    fn of(&self, name: &str) -> Option<u32> {
        match name {
            "objects" => self.objects,
            "usage" => self.cgroups,
            _ => None,
        }
    }
}

/// Load every source whose hooks exist on this kernel. Sources that cannot
/// attach are reported, not fatal; a ledger that cannot be created or
/// reused is, and then before any program was changed.
pub fn load_all(paths: &PinPaths, capacity: LedgerCapacity) -> Result<Vec<HookStatus>, Error> {
    quiet_libbpf();
    for dir in [paths.maps_dir(), paths.links_dir(), paths.builds_dir()] {
        fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
    }
    remove_staged(paths)?;
    let kernel = KernelBtf::load()?;
    // Every map any source would reuse is checked before any source is
    // loaded or replaced (an object that does not open is reported below).
    for source in hooks::ALL_SOURCES {
        if let (Ok(chosen), Ok(mut open)) = (choose(source, &kernel), open_object(source.object)) {
            prepare(&mut open, source, &chosen, paths, capacity, running(source, paths)?.as_ref())?;
        }
    }
    let mut statuses = Vec::new();
    for source in hooks::ALL_SOURCES {
        statuses.extend(load_source(source, &kernel, paths, capacity)?);
    }
    Ok(statuses)
}

/// Which instance of each module pincg hooks is loaded (`None`: not
/// loaded): cheap to take, so [`refresh`] only parses BTF when it changed.
pub fn module_instances() -> Vec<(&'static str, Option<u64>)> {
    let mut modules: Vec<&'static str> = hooks::ALL_SOURCES.iter().flat_map(|s| s.modules()).collect();
    modules.sort_unstable();
    modules.dedup();
    modules.into_iter().map(|m| (m, module_instance(m))).collect()
}

/// Bring module sources in line with the modules now loaded: attach those
/// whose module appeared (or came back), drop links of modules that went.
/// Returns the new statuses when anything changed.
pub fn refresh(
    paths: &PinPaths,
    current: &[HookStatus],
    capacity: LedgerCapacity,
) -> Result<Option<Vec<HookStatus>>, Error> {
    let kernel = KernelBtf::load()?;
    let mut changed = false;
    let mut statuses = Vec::new();
    for source in hooks::ALL_SOURCES {
        let before: Vec<&HookStatus> =
            current.iter().filter(|h| source.hooks.iter().any(|sh| sh.name == h.hook)).collect();
        let stale = before.iter().any(|h| h.is_live()) && !links_current(source, &kernel, paths);
        let waiting =
            before.iter().any(|h| matches!(h.state, HookState::WaitingForModule(m) if kernel.module_loaded(m)));
        if stale || waiting {
            changed = true;
            statuses.extend(load_source(source, &kernel, paths, capacity)?);
        } else {
            statuses.extend(before.into_iter().cloned());
        }
    }
    Ok(changed.then_some(statuses))
}

/// What `load_all` would do, without loading anything.
pub fn probe(kernel: &dyn FunctionCatalog) -> Vec<HookStatus> {
    hooks::ALL_SOURCES
        .iter()
        .flat_map(|source| match choose(source, kernel) {
            Ok(chosen) => statuses(source, &chosen, HookState::Attached),
            Err(state) => same_state(source, state),
        })
        .collect()
}

/// The variants to load, or the state every hook of the source is in.
fn choose(source: &SourceHooks, kernel: &dyn FunctionCatalog) -> Result<Vec<&'static Variant>, HookState> {
    let mut unloaded: Vec<&'static str> = Vec::new();
    for module in source.modules().filter(|m| !kernel.module_loaded(m)) {
        if !unloaded.contains(&module) {
            unloaded.push(module);
        }
    }
    let may_appear = unloaded.iter().copied().find(|m| kernel.module_absence(m).is_none());
    match (hooks::select(source, kernel), may_appear) {
        (Ok(chosen), _) => Ok(chosen),
        (Err(_), Some(module)) => Err(HookState::WaitingForModule(module)),
        // Every module it needs is missing from this kernel's build.
        (Err(_), None) if !unloaded.is_empty() => {
            let absences: Vec<String> = unloaded.iter().filter_map(|m| kernel.module_absence(m)).collect();
            Err(HookState::Unavailable(absences.join("; ")))
        }
        (Err(e), None) => Err(HookState::Unavailable(e.to_string())),
    }
}

fn load_source(
    source: &'static SourceHooks,
    kernel: &KernelBtf,
    paths: &PinPaths,
    capacity: LedgerCapacity,
) -> Result<Vec<HookStatus>, Error> {
    let chosen = match choose(source, kernel) {
        Ok(chosen) => chosen,
        Err(state) => {
            remove_links(source, paths)?;
            forget_build(paths, source.object)?;
            return Ok(same_state(source, state));
        }
    };
    let running = running(source, paths)?;
    let ours = recorded_build(paths, source.object) == Some(build_of(source.object));
    if let Some(running) = &running {
        let names = link_names(&chosen);
        if ours && running.links.len() == names.len() && names.iter().all(|n| running.link(n).is_some()) {
            return Ok(statuses(source, &chosen, HookState::Adopted));
        }
    }
    // Programs of another build keep running if the kernel refuses this
    // one's; links of this build that are stale (a module instance gone,
    // a partial set) are dropped.
    let keep_previous = running.is_some() && !ours;
    let refused = |e: libbpf_rs::Error| {
        let reason = format!("the kernel refused BPF object {}: {e} (PINCG_LIBBPF_DEBUG=1 shows why)", source.object);
        if keep_previous {
            return Ok(same_state(source, HookState::KeptPrevious(reason)));
        }
        remove_links(source, paths)?;
        Ok(same_state(source, HookState::Unavailable(reason)))
    };
    let mut open = match open_object(source.object) {
        Ok(open) => open,
        Err(e) => return refused(e),
    };
    prepare(&mut open, source, &chosen, paths, capacity, running.as_ref())?;
    let object = match open.load() {
        Ok(object) => object,
        Err(e) => return refused(e),
    };
    let statuses = match running {
        None => attach_and_pin(source, &object, &chosen, paths)?,
        Some(running) => {
            let state = if ours { HookState::Attached } else { HookState::Upgraded };
            replace(source, &object, &chosen, paths, running, state)?
        }
    };
    if statuses.iter().all(|s| matches!(s.state, HookState::Attached | HookState::Upgraded)) {
        record_build(paths, source.object, build_of(source.object))?;
    }
    Ok(statuses)
}

/// This build's object `name`, opened (not loaded).
pub(crate) fn open_object(name: &str) -> libbpf_rs::Result<OpenObject> {
    let (_, bytes, _) = objects::OBJECTS.iter().find(|(n, _, _)| *n == name).expect("build.rs builds every object");
    // The skeletons' object name: the kernel names global-data maps after it.
    ObjectBuilder::default().name(format!("{name}_bpf"))?.open_memory(bytes)
}

/// Whether the pinned shared map `pinned` (named `name`) has this build's
/// layout: what readers of the ledger check before decoding it. Every
/// object has the same shared maps; the first one's are taken. The
/// capacity of a map is whatever the ledger was created with.
pub(crate) fn check_shared(name: &str, pinned: &MapHandle, path: &Path) -> Result<(), Error> {
    let object = hooks::ALL_SOURCES[0].object;
    let mut open = open_object(object).map_err(|source| Error::Object { object, source })?;
    let btf = Btf::of_object(libbpf_rs::AsRawLibbpf::as_libbpf_object(&open));
    let Some(mut map) = open.maps_mut().find(|m| m.name() == name) else { return Ok(()) };
    map.set_max_entries(pinned.max_entries()).map_err(|source| Error::Pinned { path: path.into(), source })?;
    same_layout(pinned, &map, btf.as_ref(), || path.display().to_string())
}

/// The identity of this build's object `name`: the hash of its bytes.
fn build_of(name: &str) -> u64 {
    objects::OBJECTS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, hash)| *hash)
        .expect("build.rs builds every object")
}

/// The programs of `source` pinned links run, if any: those of a previous
/// agent (of this build or another), of a partial set (an agent died while
/// attaching), or of a module instance that went away. All are replaced the
/// same way, new programs attached before old links go.
fn running(source: &SourceHooks, paths: &PinPaths) -> Result<Option<Running>, Error> {
    let names = pinned_links(source, paths)?;
    if names.is_empty() {
        return Ok(None);
    }
    Running::open(&paths.links_dir(), &names).map(Some)
}

/// The build whose programs the links of `object` run, if recorded.
fn recorded_build(paths: &PinPaths, object: &str) -> Option<u64> {
    let prefix = format!("{object}@");
    fs::read_dir(paths.builds_dir())
        .ok()?
        .flatten()
        .find_map(|e| u64::from_str_radix(e.file_name().to_str()?.strip_prefix(&prefix)?, 16).ok())
}

/// Record that the links of `object` run build `hash` (an empty directory
/// `builds/<object>@<hash>`: the BPF filesystem holds no plain files).
fn record_build(paths: &PinPaths, object: &str, hash: u64) -> Result<(), Error> {
    forget_build(paths, object)?;
    let path = paths.build(object, hash);
    fs::create_dir(&path).map_err(|source| Error::Io { path, source })
}

fn forget_build(paths: &PinPaths, object: &str) -> Result<(), Error> {
    let prefix = format!("{object}@");
    let dir = paths.builds_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(Error::Io { path: dir, source }),
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            remove_pin(&entry.path())?;
        }
    }
    Ok(())
}

/// Load only the chosen variants; share the ledger maps through their pins,
/// and, when replacing `running` programs, their in-flight maps and globals
/// (not their read-only data: that is this build's). Every map reused must
/// have exactly this build's layout. The `objects` and `usage` maps get the
/// capacity asked for if created now, and that of the pinned one otherwise.
fn prepare(
    open: &mut OpenObject,
    source: &SourceHooks,
    chosen: &[&Variant],
    paths: &PinPaths,
    capacity: LedgerCapacity,
    running: Option<&Running>,
) -> Result<(), Error> {
    for mut prog in open.progs_mut() {
        let name = prog.name().to_string_lossy().into_owned();
        prog.set_autoload(chosen.iter().flat_map(|v| v.programs()).any(|p| p == name));
    }
    let btf = Btf::of_object(libbpf_rs::AsRawLibbpf::as_libbpf_object(&*open));
    for mut map in open.maps_mut() {
        let name = map.name().to_string_lossy().into_owned();
        if SHARED_MAPS.contains(&name.as_str()) {
            let path = paths.map(&name);
            let pinned = MapHandle::from_pinned_path(&path).ok();
            if let Some(entries) = pinned.as_ref().map(|p| p.max_entries()).or(capacity.of(&name)) {
                map.set_max_entries(entries).map_err(|source| Error::Pinned { path: path.clone(), source })?;
            }
            if let Some(pinned) = pinned {
                same_layout(&pinned, &map, btf.as_ref(), || path.display().to_string())?;
            }
            map.set_pin_path(&path).map_err(|source| Error::Pinned { path, source })?;
        } else if let Some(old) = running.and_then(|r| r.map(&name)) {
            if map.map_flags() & libbpf_rs::libbpf_sys::BPF_F_RDONLY_PROG != 0 {
                continue;
            }
            same_layout(old, &map, btf.as_ref(), || format!("{name} of the running {} programs", source.object))?;
            map.reuse_fd(old.as_fd()).map_err(|e| Error::Object { object: source.object, source: e })?;
        }
    }
    Ok(())
}

fn same_layout(
    found: &MapHandle,
    wanted: &libbpf_rs::OpenMap<'_>,
    btf: Option<&Btf>,
    map: impl Fn() -> String,
) -> Result<(), Error> {
    let found = MapLayout::of_kernel(found).map_err(|e| Error::LayoutUnreadable { map: map(), source: e })?;
    match layout::difference(&found, &MapLayout::of_open(wanted, btf)) {
        Some(difference) => Err(Error::LayoutMismatch { map: map(), difference }),
        None => Ok(()),
    }
}

/// Attach every chosen program, then pin all links; a failed attach leaves
/// nothing of this source behind and marks its hooks unavailable.
fn attach_and_pin(
    source: &SourceHooks,
    object: &Object,
    chosen: &[&'static Variant],
    paths: &PinPaths,
) -> Result<Vec<HookStatus>, Error> {
    let links = match attach(object, chosen, paths, None) {
        Ok(links) => links,
        Err(reason) => return Ok(same_state(source, HookState::Unavailable(reason))),
    };
    for (name, mut link) in links {
        let path = paths.link(&name);
        link.pin(&path).map_err(|source| Error::Pinned { path, source })?;
    }
    Ok(statuses(source, chosen, HookState::Attached))
}

/// Replace `running` programs by this build's: every new program attached
/// next to its old one first (both run for a moment: see "Upgrades" in
/// docs/architecture.md for why that counts nothing twice), then the old
/// links go: cgroup links swap their program in place, the others are
/// replaced by renaming the new link's pin over the old one's, and the old
/// link detaches when its last reference, held here, is dropped.
fn replace(
    source: &SourceHooks,
    object: &Object,
    chosen: &[&'static Variant],
    paths: &PinPaths,
    mut running: Running,
    state: HookState,
) -> Result<Vec<HookStatus>, Error> {
    let links = match attach(object, chosen, paths, Some(&running)) {
        Ok(links) => links,
        Err(reason) if state == HookState::Upgraded => return Ok(same_state(source, HookState::KeptPrevious(reason))),
        Err(reason) => {
            drop(running);
            remove_links(source, paths)?;
            return Ok(same_state(source, HookState::Unavailable(reason)));
        }
    };
    running.drain(&SHARED_MAPS, DRAIN);
    for (name, mut link) in links {
        let path = paths.link(&name);
        let staged = paths.links_dir().join(format!("{STAGED}{name}"));
        let _ = fs::remove_file(&staged);
        link.pin(&staged).map_err(|source| Error::Pinned { path: staged.clone(), source })?;
        fs::rename(&staged, &path).map_err(|source| Error::Io { path: path.clone(), source })?;
    }
    let names = link_names(chosen);
    for old in running.links.iter_mut() {
        if !names.contains(&old.name) {
            // A program no longer chosen, or of a module instance gone.
            remove_pin(&paths.link(&old.name))?;
        } else if old.updatable {
            let prog = program_of(object, old.name.split('@').next().unwrap_or_default());
            old.link.update_prog(&prog).map_err(|source| Error::Pinned { path: paths.link(&old.name), source })?;
        }
    }
    Ok(statuses(source, chosen, state))
}

fn program_of<'o>(object: &'o Object, name: &str) -> libbpf_rs::Program<'o> {
    object.progs().find(|p| p.name() == name).expect("chosen variants come from this object's programs")
}

/// Attach every chosen program (except those whose running link can take
/// the new program in place), releases before charges (see below). The
/// error names the program
/// and function that failed; the links made so far detach when dropped.
fn attach(
    object: &Object,
    chosen: &[&'static Variant],
    paths: &PinPaths,
    running: Option<&Running>,
) -> Result<Vec<(String, Link)>, String> {
    let mut links: Vec<(String, Link)> = Vec::new();
    // Releases first: every source lists its release hooks (and, within a
    // variant, the unpin and return programs) after the ones that charge, so
    // in reverse no pin is charged while its release could go unseen. Hooks
    // share programs (one ioctl refusal point serves four sources): each
    // program is attached once.
    let mut targets: Vec<&hooks::Attach> = Vec::new();
    for a in chosen.iter().flat_map(|v| v.attach.iter()).rev() {
        if !targets.iter().any(|t| t.program == a.program) {
            targets.push(a);
        }
    }
    for target in targets {
        let name = link_name(target.program, target.module);
        if running.and_then(|r| r.link(&name)).is_some_and(|l| l.updatable) {
            continue;
        }
        let prog = object
            .progs_mut()
            .find(|p| p.name() == target.program)
            .expect("chosen variants come from this object's programs");
        let section = prog.section().to_string_lossy().into_owned();
        let attached = match section.as_str() {
            s if s.starts_with("cgroup/") => attach_to_root_cgroup(&prog, paths),
            // A bare kprobe serves whichever function its variant names
            // (the same code where only the function's name changed).
            "kprobe" | "kretprobe" => prog.attach_kprobe(section == "kretprobe", target.function),
            _ => prog.attach(),
        };
        match attached {
            Ok(link) => links.push((name, link)),
            Err(e) => return Err(format!("attaching {} to {}: {e}", target.program, target.function)),
        }
    }
    Ok(links)
}

/// Cgroup programs attach to the root of the cgroup v2 hierarchy, so they
/// see every task on the node.
fn attach_to_root_cgroup(prog: &libbpf_rs::ProgramMut<'_>, paths: &PinPaths) -> libbpf_rs::Result<Link> {
    let root = fs::File::open(paths.cgroup_root()).map_err(|e| {
        libbpf_rs::Error::from(std::io::Error::new(e.kind(), format!("{}: {e}", paths.cgroup_root().display())))
    })?;
    prog.attach_cgroup(std::os::fd::AsRawFd::as_raw_fd(&root))
}

/// `<program>`, or `<program>@<instance>` for a program in a module, where
/// the instance changes every time the module is loaded.
fn link_name(program: &str, module: Option<&str>) -> String {
    match module.and_then(module_instance) {
        Some(instance) => format!("{program}@{instance}"),
        None => program.to_string(),
    }
}

fn link_names(chosen: &[&'static Variant]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in chosen.iter().flat_map(|v| v.attach.iter()).map(|a| link_name(a.program, a.module)) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// The inode of the module's sysfs directory: new for every load.
fn module_instance(module: &str) -> Option<u64> {
    fs::metadata(Path::new("/sys/module").join(module)).ok().map(|m| m.ino())
}

/// Whether the pinned links of a live source still match its modules.
fn links_current(source: &SourceHooks, kernel: &KernelBtf, paths: &PinPaths) -> bool {
    match choose(source, kernel) {
        Ok(chosen) => link_names(&chosen).iter().all(|n| paths.link(n).exists()),
        Err(_) => false,
    }
}

/// Unpin every link of `source` (its programs, any module instance).
fn remove_links(source: &SourceHooks, paths: &PinPaths) -> Result<(), Error> {
    for name in pinned_links(source, paths)? {
        remove_pin(&paths.link(&name))?;
    }
    Ok(())
}

/// The names of the links pinned for `source`'s programs (any variant,
/// any module instance).
fn pinned_links(source: &SourceHooks, paths: &PinPaths) -> Result<Vec<String>, Error> {
    let programs: Vec<&str> = source.hooks.iter().flat_map(|h| h.variants).flat_map(|v| v.programs()).collect();
    let mut names = Vec::new();
    for name in link_entries(paths)? {
        if programs.contains(&name.split('@').next().unwrap_or_default()) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Every entry of the links directory (none if it does not exist).
fn link_entries(paths: &PinPaths) -> Result<Vec<String>, Error> {
    let dir = paths.links_dir();
    match fs::read_dir(&dir) {
        Ok(entries) => Ok(entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(Error::Io { path: dir, source }),
    }
}

/// A link staged by an upgrade that stopped before renaming it over the old
/// one (`~<name>`) would keep a second program attached: unpin it (the old
/// link is still in place; the upgrade is done again).
fn remove_staged(paths: &PinPaths) -> Result<(), Error> {
    for name in link_entries(paths)?.into_iter().filter(|n| n.starts_with(STAGED)) {
        remove_pin(&paths.link(&name))?;
    }
    Ok(())
}

/// Remove everything pincg pinned: programs detach, the ledger is dropped.
pub fn unload(paths: &PinPaths) -> Result<(), Error> {
    for dir in [paths.links_dir(), paths.maps_dir(), paths.builds_dir()] {
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

fn statuses(source: &SourceHooks, chosen: &[&'static Variant], state: HookState) -> Vec<HookStatus> {
    source
        .hooks
        .iter()
        .zip(chosen)
        .map(|(hook, v)| HookStatus {
            hook: hook.name,
            source: hook.source,
            program: Some(v.primary()),
            change: v.change,
            state: state.clone(),
        })
        .collect()
}

fn same_state(source: &SourceHooks, state: HookState) -> Vec<HookStatus> {
    source
        .hooks
        .iter()
        .map(|h| HookStatus { hook: h.name, source: h.source, program: None, change: None, state: state.clone() })
        .collect()
}

/// libbpf's own messages are multi-line dumps; pincg reports errors itself
/// in one line. `PINCG_LIBBPF_DEBUG=1` shows them for debugging.
fn quiet_libbpf() {
    if std::env::var_os("PINCG_LIBBPF_DEBUG").is_none() {
        libbpf_rs::set_print(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two halves of the source registry: every BPF file build.rs
    /// compiled (but the ledger's reader) has its entry in
    /// `hooks::ALL_SOURCES`, and every entry its file, each once.
    #[test]
    fn every_bpf_object_has_one_registry_entry() {
        let mut built: Vec<&str> =
            objects::OBJECTS.iter().map(|(name, _, _)| *name).filter(|name| *name != crate::reader::OBJECT).collect();
        let mut registered: Vec<&str> = hooks::ALL_SOURCES.iter().map(|s| s.object).collect();
        built.sort_unstable();
        registered.sort_unstable();
        assert_eq!(built, registered);
    }

    /// A kernel with no function pincg hooks and no module loaded; `built`
    /// lists the modules its tree has.
    struct BareKernel {
        built: &'static [&'static str],
    }

    impl FunctionCatalog for BareKernel {
        fn params(&self, _module: Option<&str>, _function: &str) -> Option<usize> {
            None
        }

        fn module_loaded(&self, _module: &str) -> bool {
            false
        }

        fn release(&self) -> (u32, u32) {
            (6, 12)
        }

        fn module_absence(&self, module: &str) -> Option<String> {
            (!self.built.contains(&module)).then(|| format!("module {module} is not built"))
        }
    }

    fn state_of(hooks: &[HookStatus], hook: &str) -> HookState {
        hooks.iter().find(|h| h.hook == hook).unwrap_or_else(|| panic!("no hook {hook}")).state.clone()
    }

    #[test]
    fn a_module_this_kernel_lacks_is_unavailable_not_awaited() {
        // 6.1: no vduse; ib_core built, ib_uverbs too.
        let hooks = probe(&BareKernel { built: &["vfio_iommu_type1", "ib_uverbs", "ib_core"] });
        let absent = HookState::Unavailable("module vduse is not built".into());
        assert_eq!(state_of(&hooks, "vduse:register"), absent);
        assert_eq!(state_of(&hooks, "vduse:release"), absent);
        assert_eq!(state_of(&hooks, "vfio:pin"), HookState::WaitingForModule("vfio_iommu_type1"));
        assert_eq!(state_of(&hooks, "rdma:register"), HookState::WaitingForModule("ib_uverbs"));
    }

    #[test]
    fn a_source_waits_while_any_of_its_modules_may_appear() {
        // RDMA's 6.1 variant hooks ib_uverbs, its 7.x variant ib_core.
        let hooks = probe(&BareKernel { built: &["ib_core"] });
        assert_eq!(state_of(&hooks, "rdma:release"), HookState::WaitingForModule("ib_core"));
        let hooks = probe(&BareKernel { built: &[] });
        let absent = "module ib_uverbs is not built; module ib_core is not built";
        assert_eq!(state_of(&hooks, "rdma:release"), HookState::Unavailable(absent.into()));
    }
}
