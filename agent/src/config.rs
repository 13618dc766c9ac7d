//! Where `pincg agent`'s settings come from: the configuration file
//! (`/etc/pincg/config.toml`, or `--config`), else the embedded default
//! (deploy/config/pincg.toml), then the flags, which win.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pincg_cgroup_spec::config::{Config, ConfigError, DEFAULT_PATH};
use pincg_cgroup_spec::Mode;

/// The default configuration, shipped as a file and compiled in.
pub const EMBEDDED: &str = include_str!("../../deploy/config/pincg.toml");

const MEMINFO: &str = "/proc/meminfo";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// (Not a `source`: the error is part of this one's message.)
    #[error("configuration file {}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error("{MEMINFO}: no MemTotal line, which a node_budget given as a percentage needs")]
    NoMemTotal,
}

/// The flags that override the file.
#[derive(Debug, Default, clap::Args)]
pub struct Flags {
    /// The configuration file [default: /etc/pincg/config.toml if it
    /// exists, else the built-in defaults (deploy/config/pincg.toml)].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address of the Prometheus endpoint [default: 127.0.0.1:9578].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// `monitor` never refuses a pin (it counts what it would refuse);
    /// `enforce` refuses pins over pins.max and the node budget. `pincg
    /// mode` switches at runtime [default: monitor].
    #[arg(long)]
    pub mode: Option<Mode>,
    /// Export series for every cgroup, not only those with pins, a
    /// limit, a peak or events.
    #[arg(long)]
    pub metrics_all_cgroups: bool,
    /// Export series only for cgroups under this path (repeatable),
    /// e.g. `/machine.slice` or `/kubepods.slice`; replaces the file's list.
    #[arg(long = "metrics-cgroup-prefix")]
    pub metrics_prefixes: Vec<String>,
}

impl Flags {
    /// The configuration file (or the default), with these flags on top;
    /// and where it came from, for the log.
    pub fn load(self) -> Result<(Config, String), LoadError> {
        let (mut config, origin) = read(self.config.as_deref(), Path::new(DEFAULT_PATH))?;
        self.apply(&mut config);
        Ok((config, origin))
    }

    fn apply(self, config: &mut Config) {
        if let Some(mode) = self.mode {
            config.mode = mode;
        }
        if let Some(listen) = self.listen {
            config.metrics.listen = listen;
        }
        config.metrics.all_cgroups |= self.metrics_all_cgroups;
        if !self.metrics_prefixes.is_empty() {
            config.metrics.cgroup_prefixes = self.metrics_prefixes;
        }
    }
}

/// `explicit` must exist; without it `default` is read if it exists, and
/// the embedded default used if not.
fn read(explicit: Option<&Path>, default: &Path) -> Result<(Config, String), LoadError> {
    let path = explicit.unwrap_or(default);
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((Config::parse(path, &text)?, path.display().to_string())),
        Err(e) if e.kind() == ErrorKind::NotFound && explicit.is_none() => {
            let origin = format!("built-in defaults ({} does not exist)", path.display());
            Ok((Config::parse(Path::new("(built-in defaults)"), EMBEDDED)?, origin))
        }
        Err(error) => Err(LoadError::Read { path: path.to_path_buf(), error }),
    }
}

/// The node's RAM in bytes (MemTotal of /proc/meminfo).
pub fn mem_total() -> Result<u64, LoadError> {
    let text = std::fs::read_to_string(MEMINFO).map_err(|error| LoadError::Read { path: MEMINFO.into(), error })?;
    mem_total_in(&text).ok_or(LoadError::NoMemTotal)
}

fn mem_total_in(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use pincg_cgroup_spec::config::NodeBudget;

    use super::*;

    /// `name` in `fixture`, holding `text` (absent: `None`).
    fn temp(fixture: &crate::fixture::Tree, name: &str, text: Option<&str>) -> PathBuf {
        match text {
            Some(text) => fixture.write(name, text),
            None => fixture.join(name),
        }
    }

    #[test]
    fn the_embedded_default_parses_to_the_built_in_defaults() {
        assert_eq!(Config::parse(Path::new("deploy/config/pincg.toml"), EMBEDDED), Ok(Config::default()));
    }

    #[test]
    fn a_missing_default_file_means_the_embedded_default() {
        let fixture = crate::fixture::Tree::new();
        let (config, origin) = read(None, &temp(&fixture, "absent", None)).unwrap();
        assert_eq!(config, Config::default());
        assert!(origin.starts_with("built-in defaults"), "{origin}");
        let present = temp(&fixture, "present", Some("mode = \"enforce\"\nnode_budget = \"96M\"\n"));
        let (config, origin) = read(None, &present).unwrap();
        assert_eq!((config.mode, config.node_budget), (Mode::Enforce, Some(NodeBudget::Bytes(96 << 20))));
        assert_eq!(origin, present.display().to_string());
    }

    #[test]
    fn a_missing_explicit_file_is_an_error() {
        let fixture = crate::fixture::Tree::new();
        let missing = temp(&fixture, "missing", None);
        let e = read(Some(&missing), Path::new(DEFAULT_PATH)).unwrap_err();
        assert!(matches!(&e, LoadError::Read { path, .. } if *path == missing), "{e}");
        // The cause is part of the message, not a `source`: printed once.
        assert_eq!(
            format!("{:#}", anyhow::Error::new(e)),
            format!("configuration file {}: No such file or directory (os error 2)", missing.display())
        );
    }

    #[test]
    fn flags_override_the_file() {
        let fixture = crate::fixture::Tree::new();
        let file = temp(
            &fixture,
            "flags",
            Some("mode = \"enforce\"\n[metrics]\ncgroup_prefixes = [\"/a\"]\nall_cgroups = true\n"),
        );
        let flags = |mode, prefixes: &[&str]| Flags {
            config: Some(file.clone()),
            listen: Some("127.0.0.1:1".parse().unwrap()),
            mode,
            metrics_all_cgroups: false,
            metrics_prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        };
        let (config, _) = flags(Some(Mode::Monitor), &["/b"]).load().unwrap();
        assert_eq!(config.mode, Mode::Monitor);
        assert_eq!(config.metrics.listen.to_string(), "127.0.0.1:1");
        assert_eq!(config.metrics.cgroup_prefixes, ["/b"]);
        assert!(config.metrics.all_cgroups, "a flag that is not given leaves the file's true");
        let (config, _) = flags(None, &[]).load().unwrap();
        assert_eq!((config.mode, config.metrics.cgroup_prefixes), (Mode::Enforce, vec!["/a".to_string()]));
    }

    #[test]
    fn mem_total_is_read_in_bytes() {
        assert_eq!(mem_total_in("MemTotal:        4028460 kB\nMemFree:  1 kB\n"), Some(4125143040));
        assert_eq!(mem_total_in("MemFree:  1 kB\n"), None);
    }
}
