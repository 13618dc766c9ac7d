//! The systemd unit's settings, each applied with the tool that does the
//! same (docs/testing.md has the table).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use super::seccomp::{address_families, Seccomp};
use super::{cap_list, indent, join_cgroup, quote, READ_ONLY_EXCEPT_API};

/// A systemd size (`256M`: K, M, G, T are powers of 1024) in bytes.
fn systemd_bytes(value: &str) -> Result<u64> {
    let (digits, shift) = match value.chars().last() {
        Some('K') => (&value[..value.len() - 1], 10),
        Some('M') => (&value[..value.len() - 1], 20),
        Some('G') => (&value[..value.len() - 1], 30),
        Some('T') => (&value[..value.len() - 1], 40),
        _ => (value, 0),
    };
    let n: u64 = digits.parse().with_context(|| format!("size {value:?}"))?;
    Ok(n << shift)
}

/// The settings of a systemd unit, as the harness applies them.
pub struct UnitSandbox {
    /// ExecStart's arguments after the program.
    args: Vec<String>,
    /// Shell lines run as root in a new mount namespace before the agent.
    setup: Vec<String>,
    /// setpriv's options.
    setpriv: Vec<String>,
    env: Vec<(String, String)>,
    seccomp: Seccomp,
}

impl UnitSandbox {
    pub fn load(path: &Path) -> Result<UnitSandbox> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        UnitSandbox::parse(&text).with_context(|| path.display().to_string())
    }

    fn parse(text: &str) -> Result<UnitSandbox> {
        let mut section = String::new();
        let mut settings: Vec<(String, String, String)> = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_string();
                continue;
            }
            let (key, value) = line.split_once('=').with_context(|| format!("not a setting: {line:?}"))?;
            settings.push((section.clone(), key.trim().to_string(), value.trim().to_string()));
        }
        let mut unit = UnitSandbox {
            args: Vec::new(),
            setup: Vec::new(),
            setpriv: Vec::new(),
            env: Vec::new(),
            seccomp: Seccomp::default(),
        };
        let mut writable: Vec<String> = Vec::new();
        let mut after_read_only: Vec<String> = Vec::new();
        let mut cgroup: Vec<(&str, String)> = Vec::new();
        let mut protect_system = false;
        for (section, key, value) in &settings {
            let words: Vec<String> = value.split_whitespace().map(str::to_string).collect();
            match (section.as_str(), key.as_str(), value.as_str()) {
                // Ordering, documentation, installation: nothing to apply
                // to one process.
                ("Unit", "Description" | "Documentation" | "After" | "Before", _) => {}
                ("Install", "WantedBy", _) => {}
                ("Service", "Type", "simple") => {}
                ("Service", "ExecStart", _) => {
                    ensure!(
                        words.first().is_some_and(|p| p.ends_with("/pincg")),
                        "ExecStart runs {value:?}, not pincg"
                    );
                    unit.args = words[1..].to_vec();
                }
                // The scenario is the supervisor: an agent that exits fails
                // it (under systemd, a crash loop).
                ("Service", "Restart" | "RestartSec" | "RuntimeDirectoryPreserve", _) => {}
                ("Service", "RuntimeDirectory", _) => {
                    for dir in &words {
                        let path = format!("/run/{dir}");
                        unit.setup.push(format!("mkdir -p {}", quote(&path)));
                        unit.env.push(("RUNTIME_DIRECTORY".into(), path.clone()));
                        writable.push(path);
                    }
                }
                // systemd would create /etc/<dir>; the guest's /etc is the
                // host's, read-only: the directory is read as it is.
                ("Service", "ConfigurationDirectory", _) => {
                    unit.env.push(("CONFIGURATION_DIRECTORY".into(), format!("/etc/{value}")));
                }
                ("Service", "CapabilityBoundingSet", _) => {
                    unit.setpriv.push(format!("--bounding-set={}", cap_list(&words)))
                }
                ("Service", "AmbientCapabilities", _) => {
                    unit.setpriv.push(format!("--inh-caps={}", cap_list(&words)));
                    unit.setpriv.push(format!("--ambient-caps={}", cap_list(&words)));
                }
                ("Service", "NoNewPrivileges", "yes") => unit.setpriv.push("--no-new-privs".into()),
                ("Service", "ProtectSystem", "strict") => protect_system = true,
                ("Service", "ReadWritePaths", _) => writable.extend(words),
                ("Service", "ProtectHome", "yes") => {
                    for dir in ["/home", "/root", "/run/user"] {
                        after_read_only.push(format!("[ -d {dir} ] && mount -t tmpfs -o ro,mode=000 tmpfs {dir}"));
                    }
                }
                ("Service", "PrivateTmp", "yes") => {
                    for dir in ["/tmp", "/var/tmp"] {
                        after_read_only.push(format!("mount -t tmpfs -o mode=1777 tmpfs {dir}"));
                    }
                }
                ("Service", "PrivateNetwork", "no") => {}
                ("Service", "RestrictAddressFamilies", _) => {
                    unit.seccomp.address_families = Some(address_families(&words)?)
                }
                ("Service", "LockPersonality", "yes") => unit.seccomp.lock_personality = true,
                ("Service", "MemoryDenyWriteExecute", "yes") => unit.seccomp.deny_write_execute = true,
                ("Service", "RestrictRealtime", "yes") => unit.seccomp.restrict_realtime = true,
                ("Service", "SystemCallArchitectures", "native") => unit.seccomp.native_only = true,
                ("Service", "MemoryMax", _) => cgroup.push(("memory.max", systemd_bytes(value)?.to_string())),
                _ => bail!(
                    "[{section}] {key}={value}: the guest harness does not know how to apply this setting \
                     (add it to tests/src/shipped.rs and docs/testing.md)"
                ),
            }
        }
        ensure!(!unit.args.is_empty(), "no ExecStart");
        if !cgroup.is_empty() {
            let mut lines = join_cgroup("system.slice/pincg.service", &cgroup);
            lines.append(&mut unit.setup);
            unit.setup = lines;
        }
        if protect_system {
            unit.setup.push(READ_ONLY_EXCEPT_API.into());
        }
        writable.dedup();
        for path in writable {
            unit.setup.push(format!("mount --bind {0} {0} && mount -o remount,bind,rw {0}", quote(&path)));
        }
        unit.setup.append(&mut after_read_only);
        Ok(unit)
    }

    pub(super) fn command(&self, agent: &Path, flags: &[&str]) -> Result<Command> {
        // The unit runs an installed binary (/usr/local/bin/pincg); the
        // build is bound in place of one at INSTALLED first, so a workspace
        // the unit's sandbox hides (under /tmp, /home, /root) still runs.
        let mut script = format!(
            "agent=$1; shift\nmkdir -p {dir} && : > {INSTALLED} && mount --bind \"$agent\" {INSTALLED}\n",
            dir = Path::new(INSTALLED).parent().map_or_else(String::new, |d| d.display().to_string())
        );
        script.push_str(&self.setup.join("\n"));
        script.push_str(&format!("\nexec setpriv {} -- {INSTALLED} \"$@\"\n", self.setpriv.join(" ")));
        println!("   the unit's settings, applied:\n{}", indent(&script));
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-ec", &script, "sh"]);
        cmd.arg(agent).args(&self.args).args(flags);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        self.seccomp.install_on(&mut cmd);
        Ok(cmd)
    }
}

/// Where the agent under test is installed for the unit's sandbox.
const INSTALLED: &str = "/run/pincg-unit/pincg";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shipped::deploy_file;

    #[test]
    fn the_shipped_unit_is_applied_setting_by_setting() {
        let unit = UnitSandbox::load(&deploy_file("systemd/pincg.service")).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(unit.args, ["agent"]);
        let caps = "--bounding-set=-all,+bpf,+perfmon,+sys_admin,+sys_resource";
        assert!(unit.setpriv.iter().any(|o| o.starts_with(caps)), "{:?}", unit.setpriv);
        assert!(unit.setpriv.contains(&"--no-new-privs".to_string()));
        assert!(unit.setup.iter().any(|l| l.contains("memory.max") && l.contains("268435456")), "{:?}", unit.setup);
        assert!(unit.setup.iter().any(|l| l.contains("mount --bind '/run/pincg' '/run/pincg'")));
        assert!(unit.seccomp.native_only && unit.seccomp.deny_write_execute);
    }

    #[test]
    fn an_unknown_unit_setting_fails() {
        let err =
            UnitSandbox::parse("[Service]\nExecStart=/usr/local/bin/pincg agent\nProtectClock=yes\n").err().unwrap();
        assert!(format!("{err:#}").contains("ProtectClock=yes: the guest harness does not know"), "{err:#}");
        let err =
            UnitSandbox::parse("[Service]\nExecStart=/usr/local/bin/pincg agent\nProtectSystem=full\n").err().unwrap();
        assert!(format!("{err:#}").contains("ProtectSystem=full"), "{err:#}");
    }

    #[test]
    fn sizes() {
        assert_eq!(systemd_bytes("256M").unwrap(), 268435456);
    }
}
