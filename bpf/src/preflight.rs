//! Checks that a kernel can run pincg, before libbpf is asked to try.
//!
//! Each failure is one [`Error`] with one line naming the cause: lockdown
//! mode, missing BTF, missing capability, missing BPF filesystem.

use std::fs;
use std::path::{Path, PathBuf};

use crate::Error;

const LOCKDOWN: &str = "/sys/kernel/security/lockdown";
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
const PROC_STATUS: &str = "/proc/self/status";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Run every check; the first failure is returned.
pub fn check(pin_root: &Path) -> Result<(), Error> {
    check_capabilities(&fs::read_to_string(PROC_STATUS).map_err(|source| Error::Io {
        path: PROC_STATUS.into(),
        source,
    })?)?;
    check_btf(Path::new(VMLINUX_BTF))?;
    if let Ok(text) = fs::read_to_string(LOCKDOWN) {
        check_lockdown(&text)?;
    }
    check_bpffs(pin_root)
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

/// `/sys/kernel/security/lockdown` reads like `none [integrity] confidentiality`.
fn check_lockdown(text: &str) -> Result<(), Error> {
    let active = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')));
    match active {
        Some("confidentiality") => Err(Error::Lockdown {
            mode: "confidentiality".into(),
            path: LOCKDOWN.into(),
        }),
        _ => Ok(()),
    }
}

/// The pin root's nearest existing ancestor must be on a BPF filesystem.
fn check_bpffs(pin_root: &Path) -> Result<(), Error> {
    let existing: PathBuf = pin_root
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .into();
    let c_path = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::NoBpffs { path: existing.clone() })?;
    // SAFETY: statfs writes into the zeroed struct we own; the path is a valid C string.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    if rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC {
        Ok(())
    } else {
        Err(Error::NoBpffs { path: existing })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockdown_confidentiality_is_refused() {
        let err = check_lockdown("none integrity [confidentiality]\n").unwrap_err();
        assert!(err.to_string().starts_with("kernel lockdown is in confidentiality mode"));
        assert!(check_lockdown("[none] integrity confidentiality\n").is_ok());
        assert!(check_lockdown("none [integrity] confidentiality\n").is_ok());
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
