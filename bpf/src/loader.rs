//! Loads the BPF objects, attaches their programs and pins links and shared
//! maps under the pin root, so the ledger outlives the agent.
//!
//! A source whose links are already pinned (a previous agent loaded it) is
//! adopted as it is: its programs kept running while no agent was up, and
//! the maps they write are the ones this agent reads.
//!
//! Sources in modules (vfio_iommu_type1, ib_uverbs, ib_core, vduse) are loaded when
//! the module appears; [`refresh`] is called periodically for that. Their
//! links are pinned as `<program>@<module instance>` so that links of a
//! module that was unloaded and loaded again are recognised as stale and
//! replaced.

use std::fs;
use std::io::ErrorKind;
use std::mem::MaybeUninit;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapHandle, Object, OpenObject};
use pincg_cgroup_spec::Source;
use serde_json::json;

use crate::btf::KernelBtf;
use crate::hooks::{self, FunctionCatalog, SourceHooks, Variant};
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
    pub state: HookState,
}

impl HookStatus {
    pub fn is_live(&self) -> bool {
        matches!(self.state, HookState::Attached | HookState::Adopted)
    }

    /// The state in words, for logs and `pincg probe`.
    pub fn describe(&self) -> String {
        match &self.state {
            HookState::Attached => "attached".into(),
            HookState::Adopted => "adopted from a previous agent".into(),
            HookState::WaitingForModule(m) => format!("waiting for module {m}"),
            HookState::Unavailable(reason) => format!("unavailable: {reason}"),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let (state, reason) = match &self.state {
            HookState::Attached => ("attached", None),
            HookState::Adopted => ("adopted", None),
            HookState::WaitingForModule(m) => ("waiting_for_module", Some(m.to_string())),
            HookState::Unavailable(r) => ("unavailable", Some(r.clone())),
        };
        json!({"hook": self.hook, "source": self.source.key(), "program": self.program,
               "state": state, "reason": reason})
    }
}

/// Capacity of the `objects` map (live pin objects) of a ledger created by
/// this load; `None` keeps the compiled size (`PINCG_MAX_OBJECTS`). A
/// ledger already pinned keeps the capacity it was created with.
pub type LedgerObjects = Option<u32>;

/// Load every source whose hooks exist on this kernel. Sources that cannot
/// attach are reported, not fatal; a ledger that cannot be created or
/// reused is.
pub fn load_all(paths: &PinPaths, objects: LedgerObjects) -> Result<Vec<HookStatus>, Error> {
    quiet_libbpf();
    for dir in [paths.maps_dir(), paths.links_dir()] {
        fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
    }
    let kernel = KernelBtf::load()?;
    let mut statuses = Vec::new();
    for source in hooks::ALL_SOURCES {
        statuses.extend(load_source(source, &kernel, paths, objects)?);
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
pub fn refresh(paths: &PinPaths, current: &[HookStatus], objects: LedgerObjects) -> Result<Option<Vec<HookStatus>>, Error> {
    let kernel = KernelBtf::load()?;
    let mut changed = false;
    let mut statuses = Vec::new();
    for source in hooks::ALL_SOURCES {
        let before: Vec<&HookStatus> =
            current.iter().filter(|h| source.hooks.iter().any(|sh| sh.name == h.hook)).collect();
        let stale = before.iter().any(|h| h.is_live()) && !links_current(source, &kernel, paths);
        let waiting = before.iter().any(|h| matches!(h.state, HookState::WaitingForModule(m) if kernel.module_loaded(m)));
        if stale || waiting {
            changed = true;
            statuses.extend(load_source(source, &kernel, paths, objects)?);
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
    objects: LedgerObjects,
) -> Result<Vec<HookStatus>, Error> {
    let chosen = match choose(source, kernel) {
        Ok(chosen) => chosen,
        Err(state) => {
            remove_links(source, paths)?;
            return Ok(same_state(source, state));
        }
    };
    let names = link_names(&chosen);
    if names.iter().all(|n| paths.link(n).exists()) {
        return Ok(statuses(source, &chosen, HookState::Adopted));
    }
    // A partial or stale set of links (an agent died while attaching, or a
    // module was reloaded): start over.
    remove_links(source, paths)?;
    let storage = &mut MaybeUninit::uninit();
    match source.object {
        "io_uring" => load_object(skel::io_uring::IoUringSkelBuilder::default(), storage, source, &chosen, paths, objects),
        "vfio" => load_object(skel::vfio::VfioSkelBuilder::default(), storage, source, &chosen, paths, objects),
        "iommufd" => load_object(skel::iommufd::IommufdSkelBuilder::default(), storage, source, &chosen, paths, objects),
        "rdma" => load_object(skel::rdma::RdmaSkelBuilder::default(), storage, source, &chosen, paths, objects),
        "xdp" => load_object(skel::xdp::XdpSkelBuilder::default(), storage, source, &chosen, paths, objects),
        "vduse" => load_object(skel::vduse::VduseSkelBuilder::default(), storage, source, &chosen, paths, objects),
        "enforce" => load_object(skel::enforce::EnforceSkelBuilder::default(), storage, source, &chosen, paths, objects),
        "enforce_syscall" => load_object(
            skel::enforce_syscall::EnforceSyscallSkelBuilder::default(),
            storage,
            source,
            &chosen,
            paths,
            objects,
        ),
        other => unreachable!("no skeleton is built for BPF object {other}"),
    }
}

/// Open, load and attach one BPF object with only the chosen variants. An
/// object the kernel refuses (verifier, missing BTF type) leaves its hooks
/// unavailable with the reason; only a ledger that cannot be shared fails.
fn load_object<'obj, B: SkelBuilder<'obj>>(
    builder: B,
    storage: &'obj mut MaybeUninit<OpenObject>,
    source: &'static SourceHooks,
    chosen: &[&'static Variant],
    paths: &PinPaths,
    objects: LedgerObjects,
) -> Result<Vec<HookStatus>, Error> {
    let refused = |e: libbpf_rs::Error| {
        let reason = format!("the kernel refused BPF object {}: {e} (PINCG_LIBBPF_DEBUG=1 shows why)", source.object);
        Ok(same_state(source, HookState::Unavailable(reason)))
    };
    let mut open = match builder.open(storage) {
        Ok(open) => open,
        Err(e) => return refused(e),
    };
    prepare(open.open_object_mut(), chosen, paths, objects)?;
    match open.load() {
        Ok(loaded) => attach_and_pin(source, loaded.object(), chosen, paths),
        Err(e) => refused(e),
    }
}

/// Load only the chosen variants; share the ledger maps through their pins.
/// The `objects` map gets the capacity asked for if it is created now, and
/// that of the pinned one otherwise.
fn prepare(open: &mut OpenObject, chosen: &[&Variant], paths: &PinPaths, objects: LedgerObjects) -> Result<(), Error> {
    for mut prog in open.progs_mut() {
        let name = prog.name().to_string_lossy().into_owned();
        prog.set_autoload(chosen.iter().flat_map(|v| v.programs()).any(|p| p == name));
    }
    for mut map in open.maps_mut() {
        let name = map.name().to_string_lossy().into_owned();
        if SHARED_MAPS.contains(&name.as_str()) {
            let path = paths.map(&name);
            let pinned = MapHandle::from_pinned_path(&path).ok();
            if name == "objects" {
                if let Some(entries) = pinned.as_ref().map(|p| p.max_entries()).or(objects) {
                    map.set_max_entries(entries).map_err(|source| Error::Pinned { path: path.clone(), source })?;
                }
            }
            let wanted = (map.key_size(), map.value_size(), map.max_entries());
            if let Some(pinned) = pinned {
                let found = (pinned.key_size(), pinned.value_size(), pinned.max_entries());
                if found != wanted {
                    return Err(Error::LayoutMismatch { path, found, wanted });
                }
            }
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
    let mut links: Vec<(String, Link)> = Vec::new();
    let mut targets: Vec<&hooks::Attach> = chosen.iter().flat_map(|v| v.attach.iter()).collect();
    targets.dedup_by_key(|a| a.program);
    for target in targets {
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
            Ok(link) => links.push((link_name(target.program, target.module), link)),
            Err(e) => {
                let reason = format!("attaching {} to {}: {e}", target.program, target.function);
                return Ok(same_state(source, HookState::Unavailable(reason)));
            }
        }
    }
    for (name, link) in &mut links {
        let path = paths.link(name);
        link.pin(&path).map_err(|source| Error::Pinned { path, source })?;
    }
    Ok(statuses(source, chosen, HookState::Attached))
}

/// Cgroup programs attach to the root of the cgroup v2 hierarchy, so they
/// see every task on the node.
fn attach_to_root_cgroup(prog: &libbpf_rs::ProgramMut<'_>, paths: &PinPaths) -> libbpf_rs::Result<Link> {
    let root = fs::File::open(paths.cgroup_root())
        .map_err(|e| libbpf_rs::Error::from(std::io::Error::new(e.kind(), format!("{}: {e}", paths.cgroup_root().display()))))?;
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
    let mut names: Vec<String> =
        chosen.iter().flat_map(|v| v.attach.iter()).map(|a| link_name(a.program, a.module)).collect();
    names.dedup();
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
    let programs: Vec<&str> = source.hooks.iter().flat_map(|h| h.variants).flat_map(|v| v.programs()).collect();
    let dir = paths.links_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(Error::Io { path: dir, source }),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let program = name.split('@').next().unwrap_or_default();
        if programs.contains(&program) {
            remove_pin(&entry.path())?;
        }
    }
    Ok(())
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

fn statuses(source: &SourceHooks, chosen: &[&'static Variant], state: HookState) -> Vec<HookStatus> {
    source
        .hooks
        .iter()
        .zip(chosen)
        .map(|(hook, v)| HookStatus { hook: hook.name, source: hook.source, program: Some(v.primary()), state: state.clone() })
        .collect()
}

fn same_state(source: &SourceHooks, state: HookState) -> Vec<HookStatus> {
    source
        .hooks
        .iter()
        .map(|h| HookStatus { hook: h.name, source: h.source, program: None, state: state.clone() })
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
