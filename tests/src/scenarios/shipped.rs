//! The agent as it ships (tests/src/shipped.rs: the systemd unit's
//! settings, or the DaemonSet's pod) on a host shaped like a real one: a
//! logged-in user's delegated cgroup before the agent starts and another
//! after, a VM whose mirror directory libvirt's hook wrote before its
//! cgroup existed, and its QEMU running as `libvirt-qemu`, not root.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{ensure, Context, Result};

use crate::devices::{allow_user, vfio_edu_group};
use crate::scenario::{
    expect_hook_within, expect_metric, expect_no_drift, io_uring_refused, step, Agent, Cgroup, Workload, MIRROR_ROOT,
    SETTLE,
};
use crate::shipped::{delegate, View};

const MIB: u64 = 1 << 20;
/// libvirt-qemu's uid on Debian.
const QEMU_UID: u32 = 64055;
const VM: &str = r"machine.slice/machine-qemu\x2d1\x2dvm1.scope";
const POD_UID: &str = "0d1e2f30-4a5b-4c6d-8e7f-901a2b3c4d5e";
const CONTAINER: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";

pub fn unit() -> Result<()> {
    run(View::unit()?)
}

pub fn pod() -> Result<()> {
    run(View::pod()?)
}

/// Run `sh -c script` as `uid`; it must succeed.
fn as_user(uid: u32, script: &str) -> Result<()> {
    let out = Command::new("sh").args(["-c", script]).uid(uid).gid(uid).output()?;
    ensure!(out.status.success(), "as uid {uid}: `{script}`: {}", String::from_utf8_lossy(&out.stderr).trim());
    println!("   uid {uid}: {script}");
    Ok(())
}

fn run(view: View) -> Result<()> {
    step("a host as systemd and libvirt leave it: user 1000 logged in, VM 1's budget written before its cgroup");
    let early = delegate("user.slice/user-1000.slice/user@1000.service", 1000)?;
    // systemd --user makes these as the user.
    for unit in ["init.scope", "app.slice"] {
        as_user(1000, &format!("mkdir {}/{unit}", early.path().display()))?;
    }
    let vm_mirror = std::path::Path::new(MIRROR_ROOT).join(VM);
    std::fs::create_dir_all(&vm_mirror)?;
    std::fs::write(vm_mirror.join("pins.max"), "16M\n")?;
    std::fs::write(vm_mirror.join("pins.max.action"), "kill\n")?;

    step(&format!("the agent starts as {} ships it, in enforce mode", view.name()));
    let agent = Agent::start_as(&view, &["--mode", "enforce"])?;
    std::thread::sleep(std::time::Duration::from_secs(1));
    ensure!(agent.running(), "the agent exited after it was ready:\n{}", agent.log_text());
    expect_metric("pincg_mode{mode=\"enforce\"} 1")?;
    confined(&view, &agent)?;

    step("the delegatee sets limits in its subtree, created before and after the agent started");
    delegated_user(&early, 1000)?;
    let late = delegate("user.slice/user-1001.slice/user@1001.service", 1001)?;
    delegated_user(&late, 1001)?;

    step("VM 1's cgroup appears: the budget libvirt's hook wrote is in force");
    let vm = Cgroup::create(VM)?;
    vm.expect_file("pins.max", "16777216\n")?;
    vm.expect_file("pins.max.action", "kill\n")?;

    step("its QEMU runs as libvirt-qemu (uid 64055): VFIO and io_uring pins charged, refused at the byte");
    let group = vfio_edu_group()?;
    expect_hook_within("vfio:pin", 1, view.startup_budget().unwrap_or(SETTLE))?;
    allow_user(&group, QEMU_UID)?;
    let mut qemu = Workload::spawn_as("qemu", &vm, QEMU_UID, &["vm"])?;
    qemu.run(&format!("vfio 0 open {}", group.display()))?;
    qemu.run("vfio 0 map 0x0 8M")?;
    vm.expect_current(8 * MIB)?;
    qemu.expect_err("vfio 0 map 0x10000000 12M", "Cannot allocate memory")?;
    vm.expect_current(8 * MIB)?;
    qemu.run("io_uring ring")?;
    qemu.run("io_uring register 8M")?;
    vm.expect_current(16 * MIB)?;
    vm.expect_stat(&[("vfio", 8 * MIB), ("io_uring", 8 * MIB)])?;
    one_page_over(&vm, QEMU_UID, 16 * MIB)?;
    qemu.run("vfio 0 close")?;
    qemu.run("io_uring unregister")?;
    vm.expect_current(0)?;
    expect_no_drift()?;
    ensure!(agent.running(), "the agent exited:\n{}", agent.log_text());
    println!("   agent log:\n{}", agent.log_text().lines().map(|l| format!("     | {l}\n")).collect::<String>());
    kubevirt_pod(&view, &agent)?;
    if matches!(view, View::Pod(_)) {
        step("without the host's PID namespace, the pre-existing scan says it is blind");
        let log = agent.log_text();
        ensure!(
            log.contains("pins made before pincg started are unknown"),
            "no line about the pre-existing scan:\n{log}"
        );
        expect_metric("pincg_preexisting_scan_complete 0")?;
    }
    Ok(())
}

/// User `uid` owns `cg` (a delegation root): `app.slice` below (made
/// before the agent started, or now), has limit files of its own; it sets 8M there and its own
/// io_uring pins are charged, then stopped at the byte over it.
fn delegated_user(cg: &Cgroup, uid: u32) -> Result<()> {
    cg.expect_file("pins.max", "max\n")?;
    let root_owned = std::fs::metadata(cg.mirror("pins.max"))?.uid();
    ensure!(root_owned == 0, "{}: pins.max of a delegation root is uid {root_owned}'s, not root's", cg.rel);
    if !cg.path().join("app.slice").exists() {
        as_user(uid, &format!("mkdir {}/app.slice", cg.path().display()))?;
    }
    let app = Cgroup { rel: format!("{}/app.slice", cg.rel) };
    app.expect_file("pins.max", "max\n")?;
    let owner = std::fs::metadata(app.mirror("pins.max")).context("app.slice's pins.max")?.uid();
    ensure!(owner == uid, "{}: pins.max is uid {owner}'s, not the delegatee's ({uid})", app.rel);
    as_user(uid, &format!("echo 8M > '{}'", app.mirror("pins.max").display()))?;
    as_user(uid, &format!("echo kill > '{}'", app.mirror("pins.max.action").display()))?;
    app.expect_file("pins.max", "8388608\n")?;
    let mut w = Workload::spawn_as(&format!("user{uid}"), &app, uid, &["io_uring"])?;
    w.run("ring")?;
    w.run("register 8M")?;
    app.expect_current(8 * MIB)?;
    one_page_over(&app, uid, 8 * MIB)?;
    w.run("unregister")?;
    app.expect_current(0)
}

/// Another process of `uid` in `cg`, which holds `current` bytes, its
/// budget, registers one more page: refused where the kernel allows (7.x),
/// else pinned and the pinner killed (pins.max.action kill). Either way
/// the charge is back at `current`.
fn one_page_over(cg: &Cgroup, uid: u32, current: u64) -> Result<()> {
    let mut w = Workload::spawn_as(&format!("uid{uid}-over"), cg, uid, &["io_uring"])?;
    w.run("ring")?;
    if io_uring_refused().0 {
        w.expect_err("register 4K", "Cannot allocate memory")?;
    } else {
        w.expect_killed("register 4K")?;
    }
    cg.expect_current(current)
}

/// A KubeVirt virt-launcher pod: its cgroup path names the pod, not the
/// VM; the agent names the VM from its QEMU's cmdline where it sees the
/// host's processes, and says once that it cannot where it does not (the
/// pod: vm stays empty, never a wrong name).
fn kubevirt_pod(view: &View, agent: &Agent) -> Result<()> {
    step("a KubeVirt pod's QEMU (uid 107) registers 4 MiB: its VM is named from its cmdline, or said to be unknown");
    let rel =
        format!("kubepods.slice/kubepods-pod{}.slice/cri-containerd-{CONTAINER}.scope", POD_UID.replace('-', "_"));
    let pod = Cgroup::create(&rel)?;
    let dir = std::path::Path::new("/tmp/pincg-kubevirt");
    std::fs::create_dir_all(dir)?;
    let qemu_kvm = dir.join("qemu-kvm");
    if !qemu_kvm.exists() {
        std::os::unix::fs::symlink(crate::scenario::sibling_binary("pincg-workload")?, &qemu_kvm)?;
    }
    let mut qemu = Workload::spawn_program_as(
        "virt-launcher-qemu",
        &pod,
        107,
        &qemu_kvm,
        &["io_uring", "--", "-name", "guest=default_vm2,debug-threads=on"],
    )?;
    qemu.run("ring")?;
    qemu.run("register 4M")?;
    pod.expect_current(4 * MIB)?;
    let vm = if matches!(view, View::Pod(_)) { "" } else { "vm2" };
    expect_metric(&format!(
        "pincg_pinned_bytes{{cgroup=\"/{rel}\",container_id=\"{CONTAINER}\",namespace=\"\",pod=\"\",pod_uid=\"{POD_UID}\",qos=\"guaranteed\",source=\"io_uring\",vm=\"{vm}\"}} 4194304"
    ))?;
    if vm.is_empty() {
        let log = agent.log_text();
        let said = log.lines().filter(|l| l.contains("VMs in pod cgroups are not named")).count();
        ensure!(said == 1, "expected one line about unnamed pod VMs, got {said}:\n{log}");
    }
    qemu.run("unregister")?;
    pod.expect_current(0)
}

/// The agent process really runs as the view says: no new privileges,
/// only the bounding set's capabilities, in the unit's cgroup; in the pod,
/// in namespaces of its own with its own cgroupfs (only the pod) beside the
/// host's read-only one, and a read-only root.
fn confined(view: &View, agent: &Agent) -> Result<()> {
    step("the agent process is confined as the view says");
    let pid = match view {
        // sh, then unshare, stays the parent: the agent is its child.
        View::Pod(_) => {
            let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", agent.pid()))?;
            children.split_whitespace().next().context("unshare has no child")?.parse::<u32>()?
        }
        _ => agent.pid(),
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field =
        |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("?").to_string();
    let (eff, bnd) = (field("CapEff:"), field("CapBnd:"));
    println!(
        "   pid {pid}: CapEff {eff}, CapBnd {bnd}, CapAmb {}, NoNewPrivs {}",
        field("CapAmb:"),
        field("NoNewPrivs:")
    );
    ensure!(field("NoNewPrivs:") == "1", "no_new_privs is not set");
    ensure!(eff == bnd && eff != "000001ffffffffff", "effective capabilities {eff} are not the bounding set {bnd}");
    let ns =
        |kind: &str, of: &str| std::fs::read_link(format!("/proc/{of}/ns/{kind}")).map(|l| l.display().to_string());
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    match view {
        View::Unit(_) => {
            ensure!(cgroup.trim() == "0::/system.slice/pincg.service", "the agent is in {cgroup:?}");
            let max = std::fs::read_to_string("/sys/fs/cgroup/system.slice/pincg.service/memory.max")?;
            ensure!(max.trim() == "268435456", "memory.max {max:?}");
        }
        View::Pod(_) => {
            for kind in ["pid", "mnt", "cgroup", "ipc"] {
                ensure!(
                    ns(kind, &pid.to_string())? != ns(kind, "self")?,
                    "the agent shares the guest's {kind} namespace"
                );
            }
            let names = |dir: String| -> Result<Vec<String>> {
                Ok(std::fs::read_dir(&dir)
                    .with_context(|| dir.clone())?
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect())
            };
            let own = names(format!("/proc/{pid}/root/sys/fs/cgroup"))?;
            let host = names(format!("/proc/{pid}/root/host/sys/fs/cgroup"))?;
            ensure!(!own.iter().any(|n| n == "user.slice"), "the agent's own cgroupfs shows the host's tree: {own:?}");
            ensure!(host.iter().any(|n| n == "user.slice"), "/host/sys/fs/cgroup is not the host's tree: {host:?}");
            let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
            let mount_opts = |at: &str| {
                mounts
                    .lines()
                    .rev()
                    .find(|l| l.split(' ').nth(4) == Some(at))
                    .map(|l| l.split(' ').nth(5).unwrap_or("").to_string())
            };
            for (at, ro) in [("/", true), ("/host/sys/fs/cgroup", true), ("/sys/fs/bpf", false), ("/run/pincg", false)]
            {
                let opts = mount_opts(at).with_context(|| format!("nothing mounted at {at} in the pod"))?;
                ensure!(opts.split(',').any(|o| o == "ro") == ro, "{at} is mounted {opts} in the pod");
            }
            println!(
                "   pid {pid}: own pid, mount, cgroup, IPC namespaces; / and /host/sys/fs/cgroup read-only; {cgroup}",
                cgroup = cgroup.trim()
            );
        }
        View::Root => {}
    }
    Ok(())
}
