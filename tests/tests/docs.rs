//! Docs a test keeps true: every statement of docs/limitations.md (a list
//! item or a table row) names the tests that show it, `(tests: `a`, `b`)`,
//! or says `(not tested: why)`; and every test it names exists, as a guest
//! scenario (`pincg-scenario <name>`) or a Rust `#[test]` function.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use pincg_tests::guest::workspace_root;

/// One statement: its first line number and its text (continuation lines joined).
#[derive(Debug, PartialEq, Eq)]
struct Statement {
    line: usize,
    text: String,
}

/// List items (`* `, `- `) with their continuation lines, and table rows
/// other than header and separator rows.
fn statements(markdown: &str) -> Vec<Statement> {
    let mut out: Vec<Statement> = Vec::new();
    let mut in_item = false;
    let mut header_next = false;
    for (i, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("* ") || trimmed.starts_with("- ") {
            out.push(Statement { line: i + 1, text: trimmed[2..].to_string() });
            in_item = true;
        } else if trimmed.starts_with('|') {
            in_item = false;
            let separator = trimmed.chars().all(|c| matches!(c, '|' | '-' | ':' | ' '));
            if separator {
                // The row above was the header.
                if header_next {
                    out.pop();
                }
            } else {
                out.push(Statement { line: i + 1, text: trimmed.to_string() });
            }
            header_next = !separator;
            continue;
        } else if in_item && !trimmed.is_empty() && !trimmed.starts_with('#') {
            let last = out.last_mut().expect("an item is open");
            last.text.push(' ');
            last.text.push_str(trimmed);
        } else {
            in_item = false;
        }
        header_next = false;
    }
    out
}

/// The test names a statement gives in `(tests: `a`, `b`)`; `Err` if it has
/// neither that nor `(not tested: …)`.
fn named_tests(statement: &str) -> Result<Vec<String>, String> {
    if statement.contains("(not tested: ") {
        return Ok(Vec::new());
    }
    let Some(start) = statement.find("(tests: ") else {
        return Err("names no test: add `(tests: `name`)` or `(not tested: why)`".into());
    };
    let rest = &statement[start + "(tests: ".len()..];
    let end = rest.find(')').ok_or("`(tests: ` is not closed")?;
    let names: Vec<String> = rest[..end].split(',').map(|n| n.trim().trim_matches('`').to_string()).collect();
    if names.iter().any(String::is_empty) {
        return Err("an empty test name".into());
    }
    Ok(names)
}

/// Every guest scenario name and every `#[test]` function of the workspace.
fn known_tests(root: &Path) -> BTreeSet<String> {
    let mut known = BTreeSet::new();
    let scenarios = fs::read_to_string(root.join("tests/src/scenarios/mod.rs")).expect("scenario registry");
    for line in scenarios.lines().map(str::trim).filter(|l| l.starts_with("(\"")) {
        known.extend(line[2..].split('"').next().map(String::from));
    }
    let mut dirs: Vec<PathBuf> = ["agent", "bpf", "cgroup-spec", "tests"].iter().map(|d| root.join(d)).collect();
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() && path.file_name().is_some_and(|n| n != "target") {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = fs::read_to_string(&path).unwrap_or_default();
                let mut after_test = false;
                for line in text.lines().map(str::trim) {
                    if line == "#[test]" {
                        after_test = true;
                    } else if after_test && line.starts_with("fn ") {
                        known.extend(line[3..].split('(').next().map(String::from));
                        after_test = false;
                    }
                }
            }
        }
    }
    known
}

#[test]
fn every_limitation_names_a_test_that_exists() {
    let root = workspace_root();
    let path = root.join("docs/limitations.md");
    let text = fs::read_to_string(&path).expect("docs/limitations.md");
    let known = known_tests(&root);
    let mut problems = Vec::new();
    for s in statements(&text) {
        match named_tests(&s.text) {
            Err(why) => problems.push(format!("{}:{}: {why}", path.display(), s.line)),
            Ok(names) => {
                problems.extend(names.iter().filter(|n| !known.contains(*n)).map(|n| {
                    format!("{}:{}: names `{n}`, which is no scenario and no #[test]", path.display(), s.line)
                }))
            }
        }
    }
    assert!(problems.is_empty(), "docs/limitations.md:\n{}", problems.join("\n"));
}

#[test]
fn statements_are_items_and_rows_without_headers() {
    let md = "# T\n\nintro\n\n* one\n  two\n\n| a | b |\n|---|---|\n| c | d |\n";
    let got = statements(md);
    assert_eq!(got, [Statement { line: 5, text: "one two".into() }, Statement { line: 10, text: "| c | d |".into() }]);
    assert_eq!(named_tests("x (tests: `vfio`, `a_b`)"), Ok(vec!["vfio".to_string(), "a_b".to_string()]));
    assert_eq!(named_tests("x (not tested: no device)"), Ok(vec![]));
    assert!(named_tests("x").is_err());
}
