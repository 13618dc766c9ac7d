//! Whatever bytes land in /etc/pincg/config.toml, parsing never panics,
//! and every refusal names a line of the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pincg_cgroup_spec::config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(ConfigError::Syntax { line, .. } | ConfigError::Key { line, .. }) = Config::parse(Path::new("fuzz.toml"), text) {
        assert!(line >= 1 && line <= text.lines().count().max(1) + 1, "line {line} of {text:?}");
    }
});
