//! libvirt's side of a VM start, as the host and guest tests need it: the
//! shipped qemu hook (`deploy/libvirt/qemu`) run the way libvirtd runs it.

use std::ffi::OsStr;
use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};

use crate::guest::workspace_root;

/// Run the hook at `start` of the domain `xml` describes (`<name>` is
/// passed as libvirt passes it), with `env` added (PINCG_MIRROR_ROOT,
/// PINCG_OVERHEAD); it must succeed.
pub fn run_hook(name: &str, xml: &str, env: &[(&str, &OsStr)]) -> Result<()> {
    let hook = workspace_root().join("deploy/libvirt/qemu");
    let mut child = Command::new(&hook)
        .args([name, "start", "begin", "-"])
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} (python3)", hook.display()))?;
    child.stdin.take().context("hook stdin")?.write_all(xml.as_bytes())?;
    ensure!(child.wait()?.success(), "{} failed", hook.display());
    Ok(())
}
