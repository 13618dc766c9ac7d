//! Delegation as systemd does it, with the agent under the capability set
//! of deploy/systemd/pincg.service (applied with setpriv's bounding set;
//! the unit's other directives are not applied here): a cgroup delegated to
//! uid 1000 (`user@1000.service`) exists when the agent starts; the
//! delegatee owns the limit files of the cgroups it creates, writes them
//! again and again, and uses `pincg set` without BPF access; an agent
//! restarted with an empty mirror seeds it from the limits in force, so no
//! limit is lost. Without CAP_CHOWN the agent keeps running (files root's,
//! counted); without CAP_DAC_READ_SEARCH a delegatee's `chmod 700` makes
//! the scan incomplete, logged once, and nothing of the hidden cgroups is
//! dropped.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::scenario::{
    expect_hook, expect_metric, http_get, pincg, sibling_binary, step, wait_for, Cgroup, Workload, METRICS_ADDR,
    MIRROR_ROOT, SETTLE,
};

const MIB: u64 = 1 << 20;
const UID: u32 = 1000;
const UNIT: &str = include_str!("../../../deploy/systemd/pincg.service");

pub fn run() -> Result<()> {
    let user = Cgroup::create("pincg-user.slice/user@1000.service")?;
    delegate(&user)?;
    let app = Cgroup { rel: format!("{}/app.slice", user.rel) };
    as_delegatee(&["mkdir", &app.path().to_string_lossy()])?;

    step("the agent, under the unit's capabilities, starts with the delegated cgroup present");
    let agent = ShippedAgent::start()?;
    expect_hook("xdp:refuse", 1)?;
    app.expect_file("pins.max", "max\n")?;
    expect_owner(&app.mirror("pins.max"), UID)?;
    expect_owner(&app.mirror("pins.max.action"), UID)?;
    expect_owner(&user.mirror("pins.max"), 0)?;
    for dir in [Path::new(MIRROR_ROOT).join(&app.rel), Path::new(MIRROR_ROOT).join(&user.rel)] {
        expect_owner(&dir, 0)?;
    }

    step("the delegatee sets its sub-cgroup's limit with pincg set (no BPF access), twice");
    let rel = format!("/{}", app.rel);
    println!("   {}", as_delegatee(&[&pincg_path()?, "set", &rel, "max", "32M"])?.trim());
    app.expect_file("pins.max", "33554432\n")?;
    println!("   {}", as_delegatee(&[&pincg_path()?, "set", &rel, "max", "16M"])?.trim());
    app.expect_file("pins.max", "16777216\n")?;
    expect_owner(&app.mirror("pins.max"), UID)?;

    step("the delegatee writes its file again and again; the agent's canonical rewrite keeps it the delegatee's");
    let max = app.mirror("pins.max").to_string_lossy().into_owned();
    for value in [("12M", "12582912\n"), ("16M", "16777216\n")] {
        as_delegatee(&["sh", "-c", &format!("echo {} > {max}", value.0)])?;
        app.expect_file("pins.max", value.1)?;
        expect_owner(&app.mirror("pins.max"), UID)?;
    }

    step("the delegatee cannot set the delegated cgroup's own limit, nor write a mirror directory");
    let own = format!("/{}", user.rel);
    ensure!(as_delegatee(&[&pincg_path()?, "set", &own, "max", "1G"]).is_err(), "the delegatee raised its own limit");
    let planted = Path::new(MIRROR_ROOT).join(&app.rel).join("evil");
    ensure!(
        as_delegatee(&["ln", "-s", "/etc", &planted.to_string_lossy()]).is_err(),
        "a symlink planted in the mirror"
    );

    step("the 16 MiB limit refuses a 32 MiB AF_XDP umem; 8 MiB is held");
    let mut held = Workload::spawn("app-xsk", &app, &["xdp"])?;
    held.run("socket")?;
    held.expect_err("umem 32M", "Cannot allocate memory")?;
    held.run("umem 8M")?;
    app.expect_current(8 * MIB)?;

    step("the agent dies and its mirror in /run/pincg is gone (a tmpfs after a crash); the restarted agent seeds the mirror from the limits in force");
    drop(agent);
    fs::remove_dir_all(MIRROR_ROOT)?;
    let _agent = ShippedAgent::start()?;
    app.expect_file("pins.max", "16777216\n")?;
    expect_owner(&app.mirror("pins.max"), UID)?;
    user.expect_file("pins.max", "max\n")?;
    // A few rounds later the limit is still the one in force.
    std::thread::sleep(Duration::from_millis(500));
    let mut over = Workload::spawn("app-xsk-over", &app, &["xdp"])?;
    over.run("socket")?;
    over.expect_err("umem 16M", "Cannot allocate memory")?;
    let status = pincg(&["status", "--json", "--all"])?;
    ensure!(status.contains("\"max\": \"16777216\""), "the 16 MiB limit is not in force after the restart:\n{status}");

    step("without CAP_CHOWN (the unit before it had it) the agent keeps running: the files stay root's, logged and counted");
    drop(_agent);
    fs::remove_dir_all(MIRROR_ROOT)?;
    let _agent = ShippedAgent::start_without("CAP_CHOWN")?;
    app.expect_file("pins.max", "16777216\n")?;
    expect_owner(&app.mirror("pins.max"), 0)?;
    expect_metric("pincg_limit_errors_total 3")?;
    let log = fs::read_to_string("/tmp/pincg-agent.log")?;
    let line = format!("{}: cannot hand it to its delegatee", app.mirror("pins.max").display());
    ensure!(log.contains(&line), "the log lacks {line:?}:\n{log}");
    over.expect_err("umem 16M", "Cannot allocate memory")?;

    step("without CAP_DAC_READ_SEARCH, a delegatee's chmod 700 hides its sub-cgroups: the scan is incomplete, nothing is dropped");
    drop(_agent);
    let _agent = ShippedAgent::start_without("CAP_DAC_READ_SEARCH")?;
    let user_dir = user.path().to_string_lossy().into_owned();
    as_delegatee(&["chmod", "700", &user_dir])?;
    let line = format!(
        "cgroup tree scan incomplete (1 unreadable, first {user_dir}: Permission denied (os error 13)): \
         removed cgroups' entries are kept until a complete scan"
    );
    wait_for("the agent's one line about the incomplete scan", || {
        let log = fs::read_to_string("/tmp/pincg-agent.log").unwrap_or_default();
        (log.matches(&line).count() == 1, format!("{} such lines", log.matches(&line).count()))
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let log = fs::read_to_string("/tmp/pincg-agent.log")?;
    ensure!(log.matches(&line).count() == 1, "the incomplete scan is logged more than once");
    over.expect_err("umem 16M", "Cannot allocate memory")?;
    ensure!(fs::read_to_string(app.mirror("pins.max"))? == "16777216\n", "the hidden cgroup's mirror file went");

    step("readable again and removed by the delegatee: its mirror directory goes");
    as_delegatee(&["chmod", "755", &user_dir])?;
    held.run("close")?;
    drop((held, over));
    as_delegatee(&["rmdir", &app.path().to_string_lossy()])?;
    let dir = Path::new(MIRROR_ROOT).join(&app.rel);
    wait_for("the removed cgroup's mirror directory is gone", || (!dir.exists(), format!("{} exists", dir.display())))?;
    Ok(())
}

/// What systemd does for `user@1000.service` with Delegate=yes: the
/// directory and the files that let the delegatee manage it become uid 1000's.
fn delegate(cgroup: &Cgroup) -> Result<()> {
    for path in ["", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"].map(|f| cgroup.path().join(f)) {
        std::os::unix::fs::chown(&path, Some(UID), Some(UID)).with_context(|| format!("chown {}", path.display()))?;
    }
    println!("   delegated {} to uid {UID}", cgroup.path().display());
    Ok(())
}

/// Run `argv` as the delegatee (uid and gid 1000, no groups); its stdout,
/// or an error with its stderr.
fn as_delegatee(argv: &[&str]) -> Result<String> {
    let uid = UID.to_string();
    let out = Command::new("setpriv")
        .args(["--reuid", &uid, "--regid", &uid, "--clear-groups", "--"])
        .args(argv)
        .output()
        .context("running setpriv")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "   uid {UID}: {}{}",
        argv.join(" "),
        if out.status.success() { String::new() } else { format!(" -> {}", stderr.trim()) }
    );
    ensure!(out.status.success(), "as uid {UID}: `{}` failed: {}", argv.join(" "), stderr.trim());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pincg_path() -> Result<String> {
    Ok(sibling_binary("pincg")?.to_string_lossy().into_owned())
}

fn expect_owner(path: &Path, uid: u32) -> Result<()> {
    let meta = fs::symlink_metadata(path).with_context(|| format!("stat {}", path.display()))?;
    ensure!(meta.uid() == uid, "{} is uid {}'s, expected {uid}'s", path.display(), meta.uid());
    println!("   ok {} is uid {uid}'s", path.display());
    Ok(())
}

/// `pincg agent` with exactly the unit's CapabilityBoundingSet (the agent
/// runs as root there, so its capabilities are that set).
struct ShippedAgent {
    child: Child,
}

impl ShippedAgent {
    fn start() -> Result<ShippedAgent> {
        ShippedAgent::start_without("")
    }

    /// The same, with capability `dropped` left out of the set.
    fn start_without(dropped: &str) -> Result<ShippedAgent> {
        let caps = UNIT
            .lines()
            .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
            .context("the unit has no CapabilityBoundingSet")?;
        let setpriv: Vec<String> = caps
            .split_whitespace()
            .filter(|c| *c != dropped)
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect();
        let bounding = format!("-all,{}", setpriv.join(","));
        println!("   pincg agent under --bounding-set {bounding} (the unit's CapabilityBoundingSet)");
        let log = fs::OpenOptions::new().create(true).append(true).open("/tmp/pincg-agent.log")?;
        let child = Command::new("setpriv")
            .args(["--bounding-set", &bounding, "--"])
            .arg(sibling_binary("pincg")?)
            .args(["agent", "--listen", METRICS_ADDR, "--mirror-root", MIRROR_ROOT, "--mode", "enforce"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting pincg agent under setpriv")?;
        let mut agent = ShippedAgent { child };
        let started = Instant::now();
        while http_get("/healthz").is_err() {
            if let Some(status) = agent.child.try_wait()? {
                bail!("pincg agent exited with {status}:\n{}", fs::read_to_string("/tmp/pincg-agent.log")?);
            }
            ensure!(started.elapsed() < 3 * SETTLE, "pincg agent not ready after {:?}", 3 * SETTLE);
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = fs::read_to_string(format!("/proc/{}/status", agent.child.id()))?;
        let eff = status.lines().find(|l| l.starts_with("CapEff:")).unwrap_or_default().to_string();
        println!("   agent ready in {} ms, {eff}", started.elapsed().as_millis());
        Ok(agent)
    }
}

impl Drop for ShippedAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
