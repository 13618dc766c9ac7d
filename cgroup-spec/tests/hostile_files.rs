//! A corpus of hostile limit files (tests/hostile/): every one is refused
//! with a reason, none panics. The agent keeps the previous limit for each
//! (agent/src/limits.rs tests the file-level cases: symlink, directory,
//! oversized file).

use pincg_cgroup_spec::parse_limit;

#[test]
fn every_hostile_file_is_refused() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("the corpus exists").flatten().collect();
    files.sort_by_key(|e| e.file_name());
    assert!(files.len() >= 15, "the corpus lost files");
    for entry in files {
        let bytes = std::fs::read(entry.path()).expect("readable");
        let text = String::from_utf8_lossy(&bytes);
        let verdict = parse_limit(&text);
        assert!(verdict.is_err(), "{:?} was accepted as {verdict:?}", entry.file_name());
        println!("{:?}: {}", entry.file_name(), verdict.unwrap_err());
    }
}
