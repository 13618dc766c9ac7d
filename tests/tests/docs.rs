//! Docs a test keeps true: every statement of docs/limitations.md (a list
//! item, a table row or a paragraph, after the page's introduction) names
//! the tests that show it, `(tests: `a`, `b`)`, or says `(not tested:
//! why)`, or both; and every test it names, in every such group, exists, as
//! a guest scenario (`pincg-scenario <name>`) or a Rust `#[test]` or
//! `#[tokio::test]` function.

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

/// List items (`* `, `- `) with their continuation lines, table rows other
/// than header and separator rows, and paragraphs after the first heading
/// (the page's introduction before it says what the page is, not what
/// pincg does). Fenced code blocks are not statements.
fn statements(markdown: &str) -> Vec<Statement> {
    let mut out: Vec<Statement> = Vec::new();
    let mut in_item = false;
    let mut header_next = false;
    let mut sections = 0;
    let mut fenced = false;
    for (i, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            fenced = !fenced;
            in_item = false;
            continue;
        }
        if fenced {
            continue;
        }
        if trimmed.starts_with("## ") {
            sections += 1;
        }
        if trimmed.starts_with("* ") || trimmed.starts_with("- ") {
            out.push(Statement { line: i + 1, text: trimmed[2..].to_string() });
            in_item = true;
        } else if !in_item && sections > 0 && !trimmed.is_empty() && !trimmed.starts_with(['#', '|']) {
            // The first line of a paragraph; the lines after it continue it.
            out.push(Statement { line: i + 1, text: trimmed.to_string() });
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

/// The test names a statement gives in all its `(tests: `a`, `b`)`
/// groups; `Err` if it has none and no `(not tested: …)` either.
fn named_tests(statement: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut rest = statement;
    while let Some(start) = rest.find("(tests: ") {
        rest = &rest[start + "(tests: ".len()..];
        let end = rest.find(')').ok_or("`(tests: ` is not closed")?;
        names.extend(rest[..end].split(',').map(|n| n.trim().trim_matches('`').to_string()));
        rest = &rest[end..];
    }
    if names.iter().any(String::is_empty) {
        return Err("an empty test name".into());
    }
    if names.is_empty() && !statement.contains("(not tested: ") {
        return Err("names no test: add `(tests: `name`)` or `(not tested: why)`".into());
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
                    if line == "#[test]" || line == "#[tokio::test]" {
                        after_test = true;
                    } else if let Some(name) = after_test.then(|| test_fn_name(line)).flatten() {
                        known.insert(name.to_string());
                        after_test = false;
                    }
                }
            }
        }
    }
    known
}

/// The name of the function `line` declares (`fn x(`, `async fn x(`).
fn test_fn_name(line: &str) -> Option<&str> {
    let signature = line.strip_prefix("async ").unwrap_or(line).strip_prefix("fn ")?;
    signature.split(['(', '<']).next()
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
    let md = "# T\n\nintro\n\n## S\n\npara\ngraph\n\n```\ncode\n```\n* one\n  two\n\n| a | b |\n|---|---|\n| c | d |\n";
    let got = statements(md);
    assert_eq!(
        got,
        [
            Statement { line: 7, text: "para graph".into() },
            Statement { line: 13, text: "one two".into() },
            Statement { line: 18, text: "| c | d |".into() }
        ]
    );
    assert_eq!(named_tests("x (tests: `vfio`, `a_b`)"), Ok(vec!["vfio".to_string(), "a_b".to_string()]));
    assert_eq!(named_tests("x (not tested: no device)"), Ok(vec![]));
    assert_eq!(
        named_tests("x (tests: `a`); y (not tested: why); z (tests: `b`)"),
        Ok(vec!["a".to_string(), "b".to_string()]),
        "every group is checked, also beside a (not tested: …)"
    );
    assert!(named_tests("x").is_err());
    assert_eq!(test_fn_name("async fn scrape() {"), Some("scrape"));
    assert_eq!(test_fn_name("fn generic<T>() {"), Some("generic"));
    assert_eq!(test_fn_name("let x = 1;"), None);
}
