//! A hostile tenant: the owner of a delegated subtree tries to escape its
//! budget. Every attempt fails: it cannot write the delegation root's
//! limits, a higher limit of its own is still bound by the parent's, it
//! cannot plant links or files in the mirror tree, and pinning as root
//! inside it is counted the same.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{ensure, Result};

use crate::scenario::{expect_metric, io_uring_refused, pincg, step, wait_for, Agent, Cgroup, Workload};

const TENANT: u32 = 65534;

/// Run `sh -c script` as the tenant; whether it succeeded, and its stderr.
fn as_tenant(script: &str) -> Result<(bool, String)> {
    let out = Command::new("sh").args(["-c", script]).uid(TENANT).gid(TENANT).output()?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stderr).trim().to_string()))
}

pub fn run() -> Result<()> {
    let _agent = Agent::start_with(&["--mode", "enforce"])?;
    let delegated = Cgroup::create("pincg-hostile/tenant")?;
    for file in ["", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"] {
        std::os::unix::fs::chown(delegated.path().join(file), Some(TENANT), Some(TENANT))?;
    }
    println!("   {}", pincg(&["set", "/pincg-hostile/tenant", "max", "32M"])?.trim());
    println!("   {}", pincg(&["set", "/pincg-hostile/tenant", "action", "kill"])?.trim());

    step("the tenant creates a sub-cgroup; its limit files are the tenant's, the delegation root's are not");
    let (ok, err) = as_tenant(&format!("mkdir {}/vm", delegated.path().display()))?;
    ensure!(ok, "the tenant cannot create a sub-cgroup: {err}");
    let vm = Cgroup { rel: "pincg-hostile/tenant/vm".into() };
    wait_for("the sub-cgroup's mirror directory", || (vm.mirror("pins.max").exists(), String::new()))?;
    ensure!(
        std::fs::metadata(vm.mirror("pins.max"))?.uid() == TENANT,
        "the tenant does not own its sub-cgroup's pins.max"
    );
    ensure!(
        std::fs::metadata(delegated.mirror("pins.max"))?.uid() == 0,
        "the delegation root's pins.max is not root's"
    );
    for file in ["pins.current", "pins.stat", "pins.events"] {
        let meta = std::fs::metadata(vm.mirror(file))?;
        ensure!(meta.uid() == 0 && meta.mode() & 0o022 == 0, "{file} is writable by others");
    }

    step("escape 1: raising the delegation root's own limit");
    let (ok, err) = as_tenant(&format!("echo 1G > '{}'", delegated.mirror("pins.max").display()))?;
    ensure!(!ok, "the tenant raised its own budget");
    println!("   refused: {err}");

    step("escape 2: planting a symlink or a file in the mirror tree");
    let (ok, _) = as_tenant(&format!("ln -sf /etc/shadow '{}'", vm.mirror("pins.high").display()))?;
    ensure!(!ok, "the tenant replaced a limit file with a link");
    let (ok, _) = as_tenant(&format!("touch '{}/pins.extra'", vm.mirror("").display()))?;
    ensure!(!ok, "the tenant created a file in the mirror tree");

    step("escape 3: a higher limit on its sub-cgroup does not lift the parent's 32 MiB");
    let (ok, err) = as_tenant(&format!("echo 1G > '{}'", vm.mirror("pins.max").display()))?;
    ensure!(ok, "the tenant cannot set its sub-cgroup's limit: {err}");
    vm.expect_file("pins.max", "1073741824\n")?;
    let mut w = Workload::spawn("tenant-vm", &vm, &["--user", &TENANT.to_string(), "io_uring"])?;
    w.run("ring")?;
    stopped(w, "register 64M")?;
    vm.expect_current(0)?;
    delegated.expect_file("pins.events.local", "high 0\nmax 1\n")?;

    step("escape 4: pinning as root inside the tenant is counted and bound the same");
    let mut root = Workload::spawn("root-in-tenant", &vm, &["io_uring"])?;
    root.run("ring")?;
    stopped(root, "register 64M")?;
    delegated.expect_file("pins.events.local", "high 0\nmax 2\n")?;
    if io_uring_refused().0 {
        expect_metric("pincg_refusals_total{outcome=\"refused\",source=\"io_uring\"} 2")?;
    } else {
        expect_metric("pincg_kills_total{source=\"io_uring\"} 2")?;
    }

    step("the metrics endpoint listens on loopback only");
    let listening = std::fs::read_to_string("/proc/net/tcp")?;
    ensure!(listening.lines().any(|l| l.contains("0100007F:256A")), "no 127.0.0.1:9578 listener");
    ensure!(!listening.lines().any(|l| l.contains("00000000:256A")), "the metrics port listens on every address");
    Ok(())
}

/// An io_uring registration over the budget is stopped: refused with ENOMEM
/// where the kernel allows it, else the pinner is killed (action `kill`).
fn stopped(mut w: Workload, command: &str) -> Result<()> {
    if io_uring_refused().0 {
        w.expect_err(command, "Cannot allocate memory")
    } else {
        w.expect_killed(command)
    }
}
