//! The agent as it ships: a start command built, at test time, from
//! `deploy/systemd/pincg.service` ([`UnitSandbox`]) or from the DaemonSet
//! in `deploy/kubernetes/base/daemonset.yaml` ([`PodSandbox`]). The guest
//! has no systemd and no container runtime, so each setting is applied
//! with the tool that does the same (setpriv, unshare, mount, a cgroup, a
//! seccomp filter); docs/testing.md lists which setting is applied how.
//! A setting this file does not know fails the start, so a new line in the
//! unit or the manifest cannot go untested unnoticed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

mod pod;
mod seccomp;
mod unit;

pub use pod::PodSandbox;
pub use unit::UnitSandbox;

/// Where the shipped files are (the guest sees the host's tree).
pub(crate) fn deploy_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("deploy").join(rel)
}

/// How the agent is started.
pub enum View {
    /// Full root, the scenarios' default.
    Root,
    Unit(UnitSandbox),
    Pod(PodSandbox),
}

impl View {
    pub fn unit() -> Result<View> {
        Ok(View::Unit(UnitSandbox::load(&deploy_file("systemd/pincg.service"))?))
    }

    pub fn pod() -> Result<View> {
        View::pod_configured(None)
    }

    /// The DaemonSet's pod with `config` as its ConfigMap's config.toml.
    pub fn pod_configured(config: Option<&str>) -> Result<View> {
        Ok(View::Pod(PodSandbox::load(
            &deploy_file("kubernetes/base/daemonset.yaml"),
            &deploy_file("kubernetes/base/configmap.yaml"),
            config,
        )?))
    }

    /// The command that starts `agent` (the built pincg) with the view's
    /// own arguments plus `flags`; `defaults` are the scenario harness's
    /// own flags, used only by [`View::Root`] (the shipped files name their
    /// listen address and mirror root themselves).
    pub fn command(&self, agent: &Path, defaults: &[&str], flags: &[&str]) -> Result<Command> {
        match self {
            View::Root => {
                let mut cmd = Command::new(agent);
                cmd.arg("agent").args(defaults).args(flags);
                Ok(cmd)
            }
            View::Unit(unit) => unit.command(agent, flags),
            View::Pod(pod) => pod.command(agent, flags),
        }
    }

    /// How long the agent may take to answer /healthz, where the shipped
    /// file says (the DaemonSet's startupProbe).
    pub fn startup_budget(&self) -> Option<std::time::Duration> {
        match self {
            View::Pod(pod) => Some(pod.startup_budget),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            View::Root => "root",
            View::Unit(_) => "deploy/systemd/pincg.service",
            View::Pod(_) => "deploy/kubernetes/base/daemonset.yaml",
        }
    }
}

/// Quote `s` for sh.
pub(crate) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// setpriv's capability list (`-all,+bpf,…`) for capability names with or
/// without `CAP_`, in any case.
pub(crate) fn cap_list(caps: &[String]) -> String {
    let mut list = String::from("-all");
    for cap in caps {
        let name = cap.to_ascii_lowercase();
        list.push_str(&format!(",+{}", name.strip_prefix("cap_").unwrap_or(&name)));
    }
    list
}

/// Shell lines that put the shell itself into cgroup `rel` (created, with
/// the memory and cpu controllers enabled on the way down), with `files`
/// written in it first.
pub(crate) fn join_cgroup(rel: &str, files: &[(&str, String)]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut path = String::from("/sys/fs/cgroup");
    for part in rel.split('/') {
        lines.push(format!("echo '+memory +cpu' > {path}/cgroup.subtree_control"));
        path = format!("{path}/{part}");
        lines.push(format!("mkdir -p {}", quote(&path)));
    }
    for (file, value) in files {
        lines.push(format!("echo {} > {}", quote(value), quote(&format!("{path}/{file}"))));
    }
    lines.push(format!("echo $$ > {}", quote(&format!("{path}/cgroup.procs"))));
    lines
}

/// Shell lines that make every mount of this mount namespace read-only
/// except the API file systems (/dev, /proc, /sys): ProtectSystem=strict.
pub(crate) const READ_ONLY_EXCEPT_API: &str = r#"for m in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do case "$m" in /dev|/dev/*|/proc|/proc/*|/sys|/sys/*) ;; *) mount -o remount,bind,ro "$m" ;; esac; done"#;

/// The generated script, indented for the scenario output.
pub(crate) fn indent(text: &str) -> String {
    text.lines().map(|l| format!("     | {l}\n")).collect()
}

/// Files and directories a real host's systemd would have made: the
/// cgroup of a logged-in user's manager, delegated to the user (the
/// directory and the files the kernel lists in /sys/kernel/cgroup/delegate
/// chowned, as systemd does for Delegate=yes).
pub fn delegate(rel: &str, uid: u32) -> Result<crate::scenario::Cgroup> {
    let cg = crate::scenario::Cgroup::create(rel)?;
    let listed =
        std::fs::read_to_string("/sys/kernel/cgroup/delegate").context("reading /sys/kernel/cgroup/delegate")?;
    let mut chowned = 0;
    for file in std::iter::once("").chain(listed.lines().map(str::trim)) {
        let path = cg.path().join(file);
        if path.exists() {
            std::os::unix::fs::chown(&path, Some(uid), Some(uid))
                .with_context(|| format!("chown {uid} {}", path.display()))?;
            chowned += 1;
        }
    }
    println!("   {rel}: delegated to uid {uid} (the directory and {} of its files chowned)", chowned - 1);
    Ok(cg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("a'b"), "'a'\\''b'");
    }
}
