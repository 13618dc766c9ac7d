//! Reads never write: `status`, `top`, `explain`, `probe` and their
//! `--json`, run with a wrong `--cgroup-root` (a subtree, an empty
//! directory) while a 16 MiB pins.max is in force, change no BPF map entry
//! and no mirror file, and the limit still refuses (an AF_XDP umem over it).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};

use crate::scenario::{expect_hook, pincg, step, Agent, Cgroup, Workload, MIRROR_ROOT};

const MIB: u64 = 1 << 20;
const PIN_ROOT: &str = "/sys/fs/bpf/pincg";
const EMPTY_ROOT: &str = "/tmp/pincg-empty-cgroup-root";

pub fn run() -> Result<()> {
    let vm = Cgroup::create("pincg-reads/vm")?;
    // A wrong root that does not hold the limited cgroup (what a read once
    // took for removed, and dropped the limit of).
    let sibling = Cgroup::create("pincg-reads/other")?;
    let agent = Agent::start_with(&["--mode", "enforce"])?;
    expect_hook("xdp:refuse", 1)?;

    step("a 16 MiB pins.max in force, 8 MiB of it held (AF_XDP umem)");
    println!("   {}", pincg(&["set", "/pincg-reads/vm", "max", "16M"])?.trim());
    let mut held = Workload::spawn("vm-xsk", &vm, &["xdp"])?;
    held.run("socket")?;
    held.run("umem 8M")?;
    vm.expect_current(8 * MIB)?;
    fs::create_dir_all(EMPTY_ROOT)?;
    let subtree = sibling.path().to_string_lossy().into_owned();
    let roots = [subtree.as_str(), EMPTY_ROOT];

    step("every read command with a wrong --cgroup-root, the agent running: the limits map is unchanged");
    let limits = map_dump("limits")?;
    ensure!(limits.contains("16777216"), "no 16 MiB limit entry:\n{limits}");
    read_commands(&roots, held.pid())?;
    ensure!(map_dump("limits")? == limits, "a read changed the limits map");
    expect_refused(&vm)?;

    step("the same with the agent stopped: no map entry, no mirror file, no counter changes");
    agent.kill()?;
    let before = state()?;
    read_commands(&roots, held.pid())?;
    let after = state()?;
    for (name, was) in &before {
        ensure!(after.get(name) == Some(was), "{name} changed:\nbefore {was}\nafter  {:?}", after.get(name));
    }
    ensure!(
        before.len() == after.len(),
        "entries appeared: {:?}",
        after.keys().filter(|k| !before.contains_key(*k)).collect::<Vec<_>>()
    );
    println!("   ok {} maps and mirror files identical", before.len());

    step("the 16 MiB limit still refuses, in BPF, with no agent");
    expect_refused(&vm)?;
    held.run("close")?;
    Ok(())
}

/// Each read command, with each wrong root; `pid` is a process to explain.
fn read_commands(roots: &[&str], pid: u32) -> Result<()> {
    let pid = pid.to_string();
    let commands: [&[&str]; 10] = [
        &["status"],
        &["status", "--all"],
        &["status", "--json"],
        &["top", "--iterations", "2", "--interval-ms", "50"],
        &["top", "--json", "--iterations", "1"],
        &["explain", "/"],
        &["explain", &pid, "--json"],
        &["probe"],
        &["probe", "--json"],
        &["status", "--all", "--json"],
    ];
    for root in roots {
        for command in commands {
            let mut args = vec!["--cgroup-root", root];
            args.extend_from_slice(command);
            pincg(&args).with_context(|| format!("pincg {}", args.join(" ")))?;
        }
        println!("   ran {} read commands with --cgroup-root {root}", commands.len());
    }
    Ok(())
}

/// A 16 MiB umem in the cgroup over its 16 MiB limit, 8 MiB already held:
/// refused before pinning.
fn expect_refused(vm: &Cgroup) -> Result<()> {
    let mut over = Workload::spawn("vm-xsk-over", vm, &["xdp"])?;
    over.run("socket")?;
    over.expect_err("umem 16M", "Cannot allocate memory")?;
    over.run("umem 8M")?;
    over.run("close")?;
    Ok(())
}

/// Every pinned map's dump and every mirror file's owner, mode and content.
fn state() -> Result<BTreeMap<String, String>> {
    let mut state = BTreeMap::new();
    for entry in fs::read_dir(Path::new(PIN_ROOT).join("maps"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        state.insert(format!("map {name}"), map_dump(&name)?);
    }
    walk(Path::new(MIRROR_ROOT), &mut state)?;
    Ok(state)
}

fn walk(dir: &Path, state: &mut BTreeMap<String, String>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = fs::symlink_metadata(&path)?;
        let what = format!("{}:{} {:o}", meta.uid(), meta.gid(), meta.mode());
        if meta.is_dir() {
            state.insert(format!("dir {}", path.display()), what);
            walk(&path, state)?;
        } else {
            state.insert(format!("file {}", path.display()), format!("{what} {:?}", fs::read_to_string(&path)?));
        }
    }
    Ok(())
}

/// `bpftool map dump` of the pinned map `name`.
fn map_dump(name: &str) -> Result<String> {
    let path = format!("{PIN_ROOT}/maps/{name}");
    let out = Command::new("bpftool").args(["-j", "map", "dump", "pinned", &path]).output()?;
    ensure!(out.status.success(), "bpftool map dump {path}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
