//! Checks that a kernel can run pincg, before libbpf is asked to try.
//!
//! Each failure is one [`Error`] with one line naming the cause: missing
//! capability, missing BTF, lockdown mode, a kernel without BPF trampolines,
//! or no BPF filesystem. [`Policy`] is the same reasoning as a read, for
//! `pincg probe` and the agent's hook states: tracing refused, or the BPF
//! LSM inactive (LSM programs attach but never run).

use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use libbpf_rs::ProgramType;

use crate::hooks;
use crate::loader::{HookState, HookStatus};
use crate::Error;

const SECURITYFS: &str = "/sys/kernel/security";
const LOCKDOWN: &str = "/sys/kernel/security/lockdown";
const LSM: &str = "/sys/kernel/security/lsm";
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
const PROC_STATUS: &str = "/proc/self/status";
const KCONFIG: &str = "/proc/config.gz";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;
const SECURITYFS_MAGIC: i64 = 0x73636673;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Run every check; the first failure is returned. Mounts securityfs (to
/// read the lockdown mode) and a BPF filesystem at the pin root's parent if
/// they are missing, as systemd would.
pub fn check(pin_root: &Path) -> Result<(), Error> {
    let status = fs::read_to_string(PROC_STATUS).map_err(|source| Error::Io { path: PROC_STATUS.into(), source })?;
    check_capabilities(&status)?;
    check_btf(Path::new(VMLINUX_BTF))?;
    if let Some(cause) = tracing_refusal(lockdown_mode().as_deref()) {
        return Err(Error::NoTracing { cause });
    }
    ensure_bpffs(pin_root)
}

/// Why this kernel refuses pincg's tracing programs, if it does.
fn tracing_refusal(lockdown: Option<&str>) -> Option<String> {
    // Confidentiality mode forbids reading kernel memory from BPF, which
    // every pincg program does, even where tracing programs still load.
    if lockdown == Some("confidentiality") {
        return Some(explain_refusal(lockdown, None));
    }
    if !ProgramType::Tracing.is_supported().unwrap_or(false) {
        return Some(explain_refusal(lockdown, read_kconfig().as_deref()));
    }
    None
}

/// One check of [`Policy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Yes,
    /// No, and why.
    No(String),
    /// Not known, and why.
    Unknown(String),
}

/// What this kernel's security policy lets pincg's programs do, found by
/// reading securityfs and loading (never attaching) a probe program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Whether tracing programs load (else no pincg program can run, and the
    /// agent refuses to start).
    pub tracing: Verdict,
    /// Whether the BPF LSM is active (else LSM programs attach but never run).
    pub bpf_lsm: Verdict,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy { tracing: Verdict::Yes, bpf_lsm: Verdict::Yes }
    }
}

impl Policy {
    /// Read the policy in force. Changes nothing: securityfs is read where
    /// it is mounted (see [`private_securityfs`]); a caller without the
    /// capabilities to load a program learns nothing about tracing.
    pub fn read() -> Policy {
        let lockdown = fs::read_to_string(LOCKDOWN).ok().and_then(|t| active_lockdown(&t));
        let status = fs::read_to_string(PROC_STATUS).unwrap_or_default();
        let tracing = match check_capabilities(&status) {
            Err(e) => Verdict::Unknown(format!("not tested: {e}")),
            Ok(()) => tracing_refusal(lockdown.as_deref()).map_or(Verdict::Yes, Verdict::No),
        };
        Policy { tracing, bpf_lsm: bpf_lsm(fs::read_to_string(LSM).ok().as_deref()) }
    }

    /// The hooks as this policy leaves them: every hook unavailable where
    /// tracing is refused, LSM hooks unavailable where the BPF LSM is not
    /// active or not known to be; each with the reason in short
    /// ([`Policy::lines`] has it whole).
    pub fn restrict(&self, mut hooks: Vec<HookStatus>) -> Vec<HookStatus> {
        let lsm = match self.bpf_lsm {
            Verdict::Yes => None,
            Verdict::No(_) => Some(LSM_INACTIVE),
            Verdict::Unknown(_) => Some(LSM_UNKNOWN),
        };
        for h in &mut hooks {
            if matches!(self.tracing, Verdict::No(_)) {
                h.state = HookState::Unavailable(TRACING_REFUSED.into());
            } else if let Some(why) = lsm.filter(|_| hooks::runs_as_lsm(h.hook)) {
                if !matches!(h.state, HookState::Unavailable(_)) {
                    h.state = HookState::Unavailable(why.into());
                }
            }
        }
        hooks
    }

    /// The policy in words, one (check, verdict) pair per check.
    pub fn lines(&self) -> [(&'static str, String); 2] {
        let words = |verdict: &Verdict, yes: &str, no: &str| match verdict {
            Verdict::Yes => yes.to_string(),
            Verdict::No(why) => format!("{no}: {why}"),
            Verdict::Unknown(why) => format!("unknown: {why}"),
        };
        [
            ("tracing", words(&self.tracing, "allowed", "refused")),
            ("bpf lsm", words(&self.bpf_lsm, "active", "inactive")),
        ]
    }
}

/// A hook's reason where the kernel refuses tracing programs.
pub const TRACING_REFUSED: &str = "this kernel refuses BPF tracing programs, so no hook can attach";
/// An LSM hook's reason where the BPF LSM is not active.
pub const LSM_INACTIVE: &str =
    "the BPF LSM is not active (bpf is not in /sys/kernel/security/lsm): an LSM program attaches but never runs";
/// An LSM hook's reason where securityfs could not be read.
pub const LSM_UNKNOWN: &str =
    "whether the BPF LSM is active is unknown (/sys/kernel/security/lsm unreadable): an LSM program may never run";

/// Whether the BPF LSM is active, given `/sys/kernel/security/lsm` (`None`:
/// unreadable).
fn bpf_lsm(lsm: Option<&str>) -> Verdict {
    let Some(list) = lsm.map(str::trim) else {
        return Verdict::Unknown(format!("{LSM} is unreadable (securityfs not mounted, and not mountable here)"));
    };
    if list.split(',').any(|m| m == "bpf") {
        return Verdict::Yes;
    }
    Verdict::No(format!(
        "the BPF LSM is not active ({LSM} is \"{list}\", without bpf): the LSM program attaches but never runs; \
         boot with lsm={list},bpf"
    ))
}

/// Mount securityfs in a mount namespace of this process alone, if it is
/// not mounted, so that [`Policy::read`] can read it without changing the
/// system's mounts. Best effort (it needs CAP_SYS_ADMIN and a single-threaded
/// process); without it the lockdown mode and the LSM list stay unknown.
pub fn private_securityfs() {
    if is_fs(Path::new(SECURITYFS), SECURITYFS_MAGIC) {
        return;
    }
    let root = CString::new("/").expect("no NUL");
    // SAFETY: plain syscalls on valid C strings; a failure leaves this
    // process's mounts as they were or in its own namespace.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return;
        }
        // Nothing mounted in the new namespace propagates back.
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return;
        }
    }
    let _ = mount("securityfs", SECURITYFS, "securityfs");
}

fn check_capabilities(proc_status: &str) -> Result<(), Error> {
    let effective = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        Ok(())
    } else {
        Err(Error::Capability { effective })
    }
}

fn check_btf(path: &Path) -> Result<(), Error> {
    if path.exists() {
        Ok(())
    } else {
        Err(Error::NoBtf { path: path.into() })
    }
}

/// The active lockdown mode, mounting securityfs to read it if needed.
fn lockdown_mode() -> Option<String> {
    if !is_fs(Path::new(SECURITYFS), SECURITYFS_MAGIC) {
        // Best effort: without securityfs the mode stays unknown.
        let _ = mount("securityfs", SECURITYFS, "securityfs");
    }
    fs::read_to_string(LOCKDOWN).ok().and_then(|t| active_lockdown(&t))
}

/// Why tracing programs are refused: lockdown, or a kernel built without
/// the ftrace trampolines fentry/fexit need.
fn explain_refusal(lockdown: Option<&str>, kconfig: Option<&str>) -> String {
    if lockdown == Some("confidentiality") {
        return format!(
            "kernel lockdown is in confidentiality mode ({LOCKDOWN}); boot with lockdown=none or lockdown=integrity"
        );
    }
    let mode = lockdown.unwrap_or("unknown");
    let config = |line: &str| kconfig.is_some_and(|cfg| cfg.lines().any(|l| l == line));
    if config("# CONFIG_FUNCTION_TRACER is not set") {
        format!(
            "the kernel is built without CONFIG_FUNCTION_TRACER, so it has no BPF trampolines \
             (lockdown mode: {mode}); use a distribution kernel"
        )
    } else if config("CONFIG_FUNCTION_TRACER=y") {
        format!(
            "loading a probe program was refused although the kernel has BPF trampolines \
             (lockdown mode: {mode}): a security policy of this machine (lockdown, an LSM, \
             seccomp or a hypervisor) forbids BPF tracing"
        )
    } else {
        format!(
            "loading a probe program was refused (lockdown mode: {mode}); the kernel may lack \
             BPF trampolines (CONFIG_FUNCTION_TRACER) or forbid BPF tracing by policy"
        )
    }
}

/// `/sys/kernel/security/lockdown` reads like `none [integrity] confidentiality`.
fn active_lockdown(text: &str) -> Option<String> {
    text.split_whitespace().find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']'))).map(str::to_string)
}

/// `/proc/config.gz`, decompressed with the system's gzip if present.
fn read_kconfig() -> Option<String> {
    let mut child = std::process::Command::new("gzip")
        .args(["-dc", KCONFIG])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let mut text = String::new();
    child.stdout.take()?.read_to_string(&mut text).ok()?;
    child.wait().ok()?.success().then_some(text)
}

/// The directory holding the pin root must be a BPF filesystem; mount one
/// if it is not.
fn ensure_bpffs(pin_root: &Path) -> Result<(), Error> {
    let parent: PathBuf = pin_root.parent().unwrap_or(Path::new("/")).into();
    if is_fs(&parent, BPF_FS_MAGIC) {
        return Ok(());
    }
    mount("bpf", &parent.to_string_lossy(), "bpf").map_err(|source| Error::NoBpffs { path: parent, source })
}

fn is_fs(path: &Path, magic: i64) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs writes into the zeroed struct we own; the path is a valid C string.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    rc == 0 && stat.f_type as i64 == magic
}

fn mount(source: &str, target: &str, fstype: &str) -> std::io::Result<()> {
    let c = |s: &str| CString::new(s).expect("mount arguments have no NUL");
    let (source, target, fstype) = (c(source), c(target), c(fstype));
    // SAFETY: all pointers are valid C strings that outlive the call.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockdown_mode_is_the_bracketed_word() {
        assert_eq!(active_lockdown("none integrity [confidentiality]\n").as_deref(), Some("confidentiality"));
        assert_eq!(active_lockdown("[none] integrity confidentiality\n").as_deref(), Some("none"));
        assert_eq!(active_lockdown(""), None);
    }

    #[test]
    fn refusal_names_the_cause() {
        assert!(
            explain_refusal(Some("confidentiality"), None).starts_with("kernel lockdown is in confidentiality mode")
        );
        let no_ftrace = explain_refusal(Some("integrity"), Some("CONFIG_BPF=y\n# CONFIG_FUNCTION_TRACER is not set\n"));
        assert!(no_ftrace.starts_with("the kernel is built without CONFIG_FUNCTION_TRACER"), "{no_ftrace}");
        assert!(no_ftrace.contains("lockdown mode: integrity"));
        let policy = explain_refusal(Some("integrity"), Some("CONFIG_FUNCTION_TRACER=y\n"));
        assert!(policy.contains("forbids BPF tracing"), "{policy}");
        assert!(explain_refusal(None, None).contains("(lockdown mode: unknown)"));
    }

    #[test]
    fn bpf_lsm_is_active_only_when_listed() {
        assert_eq!(bpf_lsm(Some("lockdown,capability,landlock,bpf\n")), Verdict::Yes);
        assert_eq!(
            bpf_lsm(Some("lockdown,capability,landlock\n")),
            Verdict::No(
                "the BPF LSM is not active (/sys/kernel/security/lsm is \"lockdown,capability,landlock\", without bpf): \
                 the LSM program attaches but never runs; boot with lsm=lockdown,capability,landlock,bpf"
                    .into()
            )
        );
        assert!(matches!(bpf_lsm(None), Verdict::Unknown(_)));
        // "bpf" must be a whole entry.
        assert!(matches!(bpf_lsm(Some("bpfilter")), Verdict::No(_)));
    }

    #[test]
    fn policy_restricts_lsm_hooks_or_every_hook() {
        let hook = |hook: &'static str, state: HookState| HookStatus {
            hook,
            source: pincg_cgroup_spec::Source::Vfio,
            program: Some("p"),
            change: None,
            state,
        };
        let hooks = vec![
            hook("vfio:pin", HookState::Attached),
            hook("vfio:refuse", HookState::Attached),
            hook("xdp:refuse", HookState::Attached),
        ];
        let states = |policy: Policy| -> Vec<HookState> {
            policy.restrict(hooks.clone()).into_iter().map(|h| h.state).collect()
        };
        let unavailable = |why: &str| HookState::Unavailable(why.into());
        let lsm_off = Policy { tracing: Verdict::Yes, bpf_lsm: Verdict::No("no bpf".into()) };
        assert_eq!(states(lsm_off), [HookState::Attached, unavailable(LSM_INACTIVE), HookState::Attached]);
        let lsm_unknown = Policy { tracing: Verdict::Yes, bpf_lsm: Verdict::Unknown("?".into()) };
        assert_eq!(states(lsm_unknown), [HookState::Attached, unavailable(LSM_UNKNOWN), HookState::Attached]);
        let refused = Policy { tracing: Verdict::No("locked".into()), bpf_lsm: Verdict::Yes };
        assert_eq!(refused.lines(), [("tracing", "refused: locked".to_string()), ("bpf lsm", "active".to_string())]);
        assert!(states(refused).iter().all(|s| *s == unavailable(TRACING_REFUSED)));
        // Untested (no capabilities): the hooks are as BTF says.
        let untested = Policy { tracing: Verdict::Unknown("not tested".into()), bpf_lsm: Verdict::Yes };
        assert_eq!(untested.lines()[0].1, "unknown: not tested");
        assert_eq!(states(untested), [HookState::Attached, HookState::Attached, HookState::Attached]);
    }

    #[test]
    fn capabilities_need_sys_admin_or_bpf_and_perfmon() {
        assert!(check_capabilities("CapEff:\t000001ffffffffff\n").is_ok());
        assert!(check_capabilities("CapEff:\t000000c000000000\n").is_ok());
        let err = check_capabilities("CapEff:\t0000008000000000\n").unwrap_err();
        assert!(err.to_string().contains("CAP_BPF with CAP_PERFMON"));
        assert!(check_capabilities("garbage").is_err());
    }

    #[test]
    fn missing_btf_names_the_path() {
        let err = check_btf(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel BTF is missing (/nonexistent/vmlinux not found): pincg needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
        );
    }
}
