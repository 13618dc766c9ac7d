//! The agent's configuration file (TOML; every key is documented in
//! docs/operations.md). Parsing is pure, text in and [`Config`] out, so the
//! fuzz target reaches it; finding and reading the file is the agent's job.
//!
//! The document is walked key by key over toml's spanned parse tree rather
//! than deserialized through serde: an unknown key or a bad value is then
//! reported with its full key path (`metrics.listen`) and its line.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::{parse_action, parse_limit, Action, Limit, Mode};

/// Where the agent looks for its configuration when not told.
pub const DEFAULT_PATH: &str = "/etc/pincg/config.toml";

/// The metrics endpoint when the file does not say.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9578";

/// The agent's settings; [`Config::default`] is what an absent file means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub mode: Mode,
    /// What all pins on the node together may not exceed; `None`: no budget.
    pub node_budget: Option<NodeBudget>,
    pub metrics: Metrics,
    pub nri: Nri,
}

/// The NRI socket of containerd and CRI-O when the file does not say.
pub const DEFAULT_NRI_SOCKET: &str = "/var/run/nri/nri.sock";

/// The `[nri]` table: pincg as an NRI plugin of the container runtime, and
/// the node policy for the budgets of pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nri {
    pub enable: bool,
    pub socket: PathBuf,
    /// Where pincg runs among the runtime's plugins (00 to 99, ascending).
    pub plugin_index: u8,
    /// The pins.max of a pod without an annotation.
    pub pod_default: PodDefault,
    /// Added to a budget taken from a memory limit (pod_default
    /// "memory-limit", KubeVirt's VM memory).
    pub overhead: u64,
    /// The pins.max.action of a pod given a budget by the plugin.
    pub action: Action,
    /// Namespaces whose pods' annotations may raise the budget above
    /// pod_default (and choose another action); elsewhere they may only
    /// lower it.
    pub raise_namespaces: Vec<String>,
}

/// `nri.pod_default`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodDefault {
    /// No budget unless an annotation (or KubeVirt's VM memory) gives one.
    None,
    Bytes(u64),
    /// The pod's memory limit plus `overhead` (none if it has none).
    MemoryLimit,
}

impl PodDefault {
    pub fn parse(text: &str) -> Result<PodDefault, String> {
        match text.trim() {
            "none" => Ok(PodDefault::None),
            "memory-limit" => Ok(PodDefault::MemoryLimit),
            t => match parse_limit(t) {
                Ok(Limit::Bytes(b)) => Ok(PodDefault::Bytes(b)),
                Ok(Limit::Max) => Ok(PodDefault::None),
                Err(e) => Err(format!("{e}; or \"none\" or \"memory-limit\"")),
            },
        }
    }
}

impl Default for Nri {
    fn default() -> Nri {
        Nri {
            enable: false,
            socket: PathBuf::from(DEFAULT_NRI_SOCKET),
            plugin_index: 10,
            pod_default: PodDefault::None,
            overhead: 0,
            action: Action::Alert,
            raise_namespaces: Vec::new(),
        }
    }
}

/// The `[metrics]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    pub listen: SocketAddr,
    /// Series for every cgroup, not only those with something to say.
    pub all_cgroups: bool,
    /// Series only for cgroups under these paths; empty: everywhere.
    pub cgroup_prefixes: Vec<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            mode: Mode::Monitor,
            node_budget: None,
            metrics: Metrics {
                listen: DEFAULT_LISTEN.parse().expect("the default address parses"),
                all_cgroups: false,
                cgroup_prefixes: Vec::new(),
            },
            nri: Nri::default(),
        }
    }
}

/// The node-wide budget as written: bytes, or a share of MemTotal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeBudget {
    Bytes(u64),
    /// Percent of MemTotal, 1 to 100.
    PercentOfMemory(u8),
}

impl NodeBudget {
    /// The budget in bytes on a node with `mem_total` bytes of RAM.
    pub fn bytes(self, mem_total: u64) -> u64 {
        match self {
            NodeBudget::Bytes(b) => b,
            NodeBudget::PercentOfMemory(p) => (u128::from(mem_total) * u128::from(p) / 100) as u64,
        }
    }

    /// `off` (or `max`) is no budget; `N%` a share of MemTotal; anything
    /// else a limit as `pins.max` takes it (`96G`, `103079215104`).
    pub fn parse(text: &str) -> Result<Option<NodeBudget>, String> {
        let t = text.trim();
        if t == "off" {
            return Ok(None);
        }
        if let Some(percent) = t.strip_suffix('%') {
            return match percent.trim().parse::<u8>() {
                Ok(p @ 1..=100) => Ok(Some(NodeBudget::PercentOfMemory(p))),
                _ => Err(format!("{t:?} is not a whole percentage of MemTotal from 1% to 100%")),
            };
        }
        match parse_limit(t) {
            Ok(Limit::Bytes(b)) => Ok(Some(NodeBudget::Bytes(b))),
            Ok(Limit::Max) => Ok(None),
            Err(e) => Err(format!("{e}; or a percentage of MemTotal such as \"90%\", or \"off\"")),
        }
    }
}

impl fmt::Display for NodeBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeBudget::Bytes(b) => write!(f, "{b} bytes"),
            NodeBudget::PercentOfMemory(p) => write!(f, "{p}% of MemTotal"),
        }
    }
}

/// Why a configuration file was refused: the file, the line and, for a
/// key that is unknown or has a bad value, the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{}, line {line}: {reason}", path.display())]
    Syntax { path: PathBuf, line: usize, reason: String },
    #[error("{}, line {line}: key `{key}`: {reason}", path.display())]
    Key { path: PathBuf, line: usize, key: String, reason: String },
}

type Value<'i> = Spanned<DeValue<'i>>;

impl Config {
    /// Parse the text of the file at `path` (the path only names the file
    /// in errors). Keys not given keep their default.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let doc = DeTable::parse(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            line: line_of(text, e.span().map_or(0, |s| s.start)),
            reason: e.message().trim().to_string(),
        })?;
        let at = Walk { path, text };
        let mut config = Config::default();
        for (key, value) in doc.get_ref().iter() {
            match key.get_ref().as_ref() {
                "mode" => config.mode = at.string("mode", value)?.parse().map_err(|r| at.bad("mode", value, r))?,
                "node_budget" => config.node_budget = at.node_budget(value)?,
                "metrics" => at.metrics(value, &mut config.metrics)?,
                "nri" => at.nri(value, &mut config.nri)?,
                other => return Err(at.unknown(other, key, "mode, node_budget, metrics, nri")),
            }
        }
        Ok(config)
    }
}

/// The file being walked, for errors.
struct Walk<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Walk<'_> {
    fn metrics(&self, value: &Value, metrics: &mut Metrics) -> Result<(), ConfigError> {
        let DeValue::Table(table) = value.get_ref() else {
            return Err(self.wrong_type("metrics", value, "a table"));
        };
        for (key, value) in table.iter() {
            match key.get_ref().as_ref() {
                "listen" => {
                    let text = self.string("metrics.listen", value)?;
                    metrics.listen = text.parse().map_err(|e| {
                        self.bad("metrics.listen", value, format!("{text:?} is not an address and port ({e})"))
                    })?;
                }
                "all_cgroups" => match value.get_ref() {
                    DeValue::Boolean(b) => metrics.all_cgroups = *b,
                    _ => return Err(self.wrong_type("metrics.all_cgroups", value, "true or false")),
                },
                "cgroup_prefixes" => metrics.cgroup_prefixes = self.prefixes(value)?,
                other => {
                    let name = format!("metrics.{other}");
                    return Err(self.unknown(&name, key, "listen, all_cgroups, cgroup_prefixes"));
                }
            }
        }
        Ok(())
    }

    fn nri(&self, value: &Value, nri: &mut Nri) -> Result<(), ConfigError> {
        let DeValue::Table(table) = value.get_ref() else {
            return Err(self.wrong_type("nri", value, "a table"));
        };
        for (key, value) in table.iter() {
            let name = format!("nri.{}", key.get_ref());
            match key.get_ref().as_ref() {
                "enable" => match value.get_ref() {
                    DeValue::Boolean(b) => nri.enable = *b,
                    _ => return Err(self.wrong_type(&name, value, "true or false")),
                },
                "socket" => {
                    let path = self.string(&name, value)?;
                    if !path.starts_with('/') {
                        return Err(self.bad(&name, value, format!("{path:?} is not an absolute path")));
                    }
                    nri.socket = PathBuf::from(path);
                }
                "plugin_index" => match value.get_ref() {
                    DeValue::Integer(i) => match u8::from_str_radix(i.as_str(), i.radix()) {
                        Ok(n @ 0..=99) => nri.plugin_index = n,
                        _ => return Err(self.bad(&name, value, format!("{i} is not an index from 0 to 99"))),
                    },
                    _ => return Err(self.wrong_type(&name, value, "an integer from 0 to 99")),
                },
                "pod_default" => {
                    nri.pod_default =
                        PodDefault::parse(self.string(&name, value)?).map_err(|r| self.bad(&name, value, r))?
                }
                "overhead" => {
                    nri.overhead = match parse_limit(self.string(&name, value)?) {
                        Ok(Limit::Bytes(b)) => b,
                        Ok(Limit::Max) => return Err(self.bad(&name, value, "an overhead cannot be \"max\"".into())),
                        Err(e) => return Err(self.bad(&name, value, e.to_string())),
                    }
                }
                "action" => {
                    nri.action =
                        parse_action(self.string(&name, value)?).map_err(|e| self.bad(&name, value, e.to_string()))?
                }
                "raise_namespaces" => {
                    let DeValue::Array(items) = value.get_ref() else {
                        return Err(self.wrong_type(&name, value, "an array of namespace names"));
                    };
                    nri.raise_namespaces = items
                        .iter()
                        .map(|item| self.string(&name, item).map(str::to_string))
                        .collect::<Result<_, _>>()?;
                }
                _ => {
                    return Err(self.unknown(
                        &name,
                        key,
                        "enable, socket, plugin_index, pod_default, overhead, action, raise_namespaces",
                    ))
                }
            }
        }
        Ok(())
    }

    fn prefixes(&self, value: &Value) -> Result<Vec<String>, ConfigError> {
        const KEY: &str = "metrics.cgroup_prefixes";
        let DeValue::Array(items) = value.get_ref() else {
            return Err(self.wrong_type(KEY, value, "an array of cgroup paths"));
        };
        items
            .iter()
            .map(|item| {
                let path = self.string(KEY, item)?;
                if !path.starts_with('/') {
                    return Err(self.bad(
                        KEY,
                        item,
                        format!("{path:?} is not a cgroup path such as \"/machine.slice\""),
                    ));
                }
                Ok(path.to_string())
            })
            .collect()
    }

    fn node_budget(&self, value: &Value) -> Result<Option<NodeBudget>, ConfigError> {
        match value.get_ref() {
            DeValue::Integer(i) => match u64::from_str_radix(i.as_str(), i.radix()) {
                Ok(bytes) => Ok(Some(NodeBudget::Bytes(bytes))),
                Err(_) => Err(self.bad("node_budget", value, format!("{i} is not a byte count of 0 to 2^64-1"))),
            },
            DeValue::String(s) => NodeBudget::parse(s).map_err(|r| self.bad("node_budget", value, r)),
            _ => Err(self.wrong_type("node_budget", value, "a byte count, a size such as \"96G\", \"90%\" or \"off\"")),
        }
    }

    fn string<'v>(&self, key: &str, value: &'v Value) -> Result<&'v str, ConfigError> {
        match value.get_ref() {
            DeValue::String(s) => Ok(s),
            _ => Err(self.wrong_type(key, value, "a string")),
        }
    }

    fn wrong_type(&self, key: &str, value: &Value, wanted: &str) -> ConfigError {
        self.bad(key, value, format!("expected {wanted}, found {}", value.get_ref().type_str()))
    }

    fn unknown<K>(&self, name: &str, key: &Spanned<K>, known: &str) -> ConfigError {
        self.error(name, key.span().start, format!("unknown key (known here: {known})"))
    }

    fn bad(&self, key: &str, value: &Value, reason: String) -> ConfigError {
        self.error(key, value.span().start, reason)
    }

    fn error(&self, key: &str, offset: usize, reason: String) -> ConfigError {
        ConfigError::Key {
            path: self.path.to_path_buf(),
            line: line_of(self.text, offset),
            key: key.to_string(),
            reason,
        }
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/pincg/config.toml"), text)
    }

    fn key_error(text: &str) -> (usize, String, String) {
        match parse(text) {
            Err(ConfigError::Key { line, key, reason, .. }) => (line, key, reason),
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    #[test]
    fn an_empty_file_is_the_default() {
        assert_eq!(parse(""), Ok(Config::default()));
        assert_eq!(Config::default().metrics.listen.to_string(), "127.0.0.1:9578");
        assert_eq!(Config::default().mode, Mode::Monitor);
    }

    #[test]
    fn every_key() {
        let text = "mode = \"enforce\"\nnode_budget = \"96M\"\n[metrics]\nlisten = \"0.0.0.0:9000\"\n\
                    all_cgroups = true\ncgroup_prefixes = [\"/machine.slice\", \"/kubepods.slice\"]\n";
        let config = parse(text).unwrap();
        assert_eq!(config.mode, Mode::Enforce);
        assert_eq!(config.node_budget, Some(NodeBudget::Bytes(100663296)));
        assert_eq!(config.metrics.listen.to_string(), "0.0.0.0:9000");
        assert!(config.metrics.all_cgroups);
        assert_eq!(config.metrics.cgroup_prefixes, ["/machine.slice", "/kubepods.slice"]);
        // A dotted key is the same key.
        assert!(parse("metrics.all_cgroups = true").unwrap().metrics.all_cgroups);
    }

    #[test]
    fn node_budget_forms() {
        let budget = |v: &str| parse(&format!("node_budget = {v}")).map(|c| c.node_budget);
        assert_eq!(budget("100663296"), Ok(Some(NodeBudget::Bytes(100663296))));
        assert_eq!(budget("\"100663296\""), Ok(Some(NodeBudget::Bytes(100663296))));
        assert_eq!(budget("\"64G\""), Ok(Some(NodeBudget::Bytes(64 << 30))));
        assert_eq!(budget("\"90%\""), Ok(Some(NodeBudget::PercentOfMemory(90))));
        assert_eq!(budget("\"off\""), Ok(None));
        assert_eq!(budget("\"max\""), Ok(None));
        assert_eq!(NodeBudget::PercentOfMemory(90).bytes(4 << 30), 3865470566);
        assert_eq!(NodeBudget::PercentOfMemory(100).bytes(u64::MAX), u64::MAX);
        assert_eq!(NodeBudget::Bytes(5).bytes(1), 5);
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_line() {
        let e = parse("mode = \"monitor\"\n\n[metrics]\nlisten = \"here\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/pincg/config.toml, line 4: key `metrics.listen`: \"here\" is not an address and port (invalid socket address syntax)"
        );
        let (line, key, reason) = key_error("# comment\nmod = \"enforce\"\n");
        assert_eq!((line, key.as_str()), (2, "mod"));
        assert_eq!(reason, "unknown key (known here: mode, node_budget, metrics, nri)");
        let (line, key, _) = key_error("[metrics]\nall_cgroups = true\nprefixes = []\n");
        assert_eq!((line, key.as_str()), (3, "metrics.prefixes"));
        let (line, key, reason) = key_error("mode = \"enforcing\"");
        assert_eq!(
            (line, key.as_str(), reason.as_str()),
            (1, "mode", "\"enforcing\" is not a mode (monitor or enforce)")
        );
        let (_, key, reason) = key_error("mode = 1");
        assert_eq!((key.as_str(), reason.as_str()), ("mode", "expected a string, found integer"));
        let (_, _, reason) = key_error("node_budget = -1");
        assert_eq!(reason, "-1 is not a byte count of 0 to 2^64-1");
        let (_, _, reason) = key_error("node_budget = \"150%\"");
        assert_eq!(reason, "\"150%\" is not a whole percentage of MemTotal from 1% to 100%");
        let (_, _, reason) = key_error("node_budget = \"lots\"");
        assert!(reason.starts_with("\"lots\" is not a byte count"), "{reason}");
        let (_, key, _) = key_error("[metrics]\ncgroup_prefixes = [\"machine.slice\"]");
        assert_eq!(key, "metrics.cgroup_prefixes");
        let (_, key, reason) = key_error("metrics = 3");
        assert_eq!((key.as_str(), reason.as_str()), ("metrics", "expected a table, found integer"));
    }

    #[test]
    fn nri_keys() {
        let text = "[nri]\nenable = true\nsocket = \"/run/nri/nri.sock\"\nplugin_index = 5\n\
                    pod_default = \"memory-limit\"\noverhead = \"256M\"\naction = \"kill\"\n\
                    raise_namespaces = [\"kubevirt\"]\n";
        let nri = parse(text).unwrap().nri;
        assert_eq!(
            nri,
            Nri {
                enable: true,
                socket: PathBuf::from("/run/nri/nri.sock"),
                plugin_index: 5,
                pod_default: PodDefault::MemoryLimit,
                overhead: 256 << 20,
                action: Action::Kill,
                raise_namespaces: vec!["kubevirt".into()],
            }
        );
        assert_eq!(parse("nri.pod_default = \"8G\"").unwrap().nri.pod_default, PodDefault::Bytes(8 << 30));
        assert_eq!(parse("nri.pod_default = \"none\"").unwrap().nri.pod_default, PodDefault::None);
        let (_, key, reason) = key_error("[nri]\nplugin_index = 100");
        assert_eq!((key.as_str(), reason.as_str()), ("nri.plugin_index", "100 is not an index from 0 to 99"));
        let (_, key, _) = key_error("[nri]\nsocket = \"nri.sock\"");
        assert_eq!(key, "nri.socket");
        let (_, key, reason) = key_error("[nri]\noverhead = \"max\"");
        assert_eq!((key.as_str(), reason.as_str()), ("nri.overhead", "an overhead cannot be \"max\""));
        let (line, key, _) = key_error("[nri]\nenable = true\npolicy = 1");
        assert_eq!((line, key.as_str()), (3, "nri.policy"));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        match parse("mode = \"monitor\"\nnode_budget = \n") {
            Err(ConfigError::Syntax { line, .. }) => assert_eq!(line, 2),
            other => panic!("{other:?}"),
        }
        match parse("mode = \"monitor\"\nmode = \"enforce\"\n") {
            Err(ConfigError::Syntax { line, reason, .. }) => assert_eq!(line, 2, "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
