//! Checks that a kernel can run pincg, before libbpf is asked to try.
//!
//! Each failure is one [`Error`] with one line naming the cause: missing
//! capability, missing BTF, lockdown mode, a kernel without BPF trampolines,
//! or no BPF filesystem.

use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use libbpf_rs::ProgramType;

use crate::Error;

const SECURITYFS: &str = "/sys/kernel/security";
const LOCKDOWN: &str = "/sys/kernel/security/lockdown";
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
    // Confidentiality mode forbids reading kernel memory from BPF, which
    // every pincg program does, even where tracing programs still load.
    let lockdown = lockdown_mode();
    if lockdown.as_deref() == Some("confidentiality") {
        return Err(Error::NoTracing { cause: explain_refusal(lockdown.as_deref(), None) });
    }
    if !ProgramType::Tracing.is_supported().unwrap_or(false) {
        return Err(Error::NoTracing { cause: explain_refusal(lockdown.as_deref(), read_kconfig().as_deref()) });
    }
    ensure_bpffs(pin_root)
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
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .map(str::to_string)
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
        assert!(explain_refusal(Some("confidentiality"), None)
            .starts_with("kernel lockdown is in confidentiality mode"));
        let no_ftrace = explain_refusal(Some("integrity"), Some("CONFIG_BPF=y\n# CONFIG_FUNCTION_TRACER is not set\n"));
        assert!(no_ftrace.starts_with("the kernel is built without CONFIG_FUNCTION_TRACER"), "{no_ftrace}");
        assert!(no_ftrace.contains("lockdown mode: integrity"));
        let policy = explain_refusal(Some("integrity"), Some("CONFIG_FUNCTION_TRACER=y\n"));
        assert!(policy.contains("forbids BPF tracing"), "{policy}");
        assert!(explain_refusal(None, None).contains("(lockdown mode: unknown)"));
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
