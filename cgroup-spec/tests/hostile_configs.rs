//! A corpus of hostile configuration files (tests/hostile-config/): every
//! one is refused, none panics, and the error names the file, the line and
//! (unless the file is not TOML at all) the key, as the first line of each
//! file says: `# expect: line N, key K` or `# expect: line N, syntax`.

use pincg_cgroup_spec::config::{Config, ConfigError};

#[test]
fn every_hostile_config_is_refused_at_its_line_and_key() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile-config");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("the corpus exists").flatten().collect();
    files.sort_by_key(|e| e.file_name());
    assert!(files.len() >= 25, "the corpus lost files");
    for entry in files {
        let path = entry.path();
        let text = std::fs::read_to_string(&path).expect("readable UTF-8");
        let expect = text.lines().next().and_then(|l| l.strip_prefix("# expect: ")).expect("an expect line");
        let error = Config::parse(&path, &text).expect_err(&format!("{path:?} was accepted"));
        let seen = match &error {
            ConfigError::Key { line, key, .. } => format!("line {line}, key {key}"),
            ConfigError::Syntax { line, .. } => format!("line {line}, syntax"),
        };
        assert_eq!(seen, expect, "{}", error);
        assert!(error.to_string().starts_with(&format!("{}, line ", path.display())), "{error}");
        println!("{error}");
    }
}
