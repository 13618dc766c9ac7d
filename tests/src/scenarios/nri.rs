//! pincg as an NRI plugin of a real containerd (Debian's 1.7, NRI on) with
//! runc, driven over CRI as the kubelet would: budgets from annotations
//! and the node policy are in the kernel when CreateContainer returns, a
//! tenant's raise is refused and counted, a pod's limit goes with it.

use std::fs;
use std::path::Path;

use anyhow::{ensure, Context, Result};

use crate::cri::{self, Containerd, Pod};
use crate::devices::vfio_edu_group;
use crate::scenario::{
    expect_hook, expect_metric, io_uring_refused, pincg, sibling_binary, skip, step, wait_for, Agent, Cgroup, Workload,
};
use crate::shipped::View;

const MIB: u64 = 1 << 20;
pub(super) const OUT: &str = "/tmp/pincg-nri-out";

/// The limit the kernel enforces for `cgroup` (`pincg status --json` reads
/// the BPF limits map), as (max, action).
pub(super) fn limit_in_kernel(cgroup: &str) -> Result<Option<(String, String)>> {
    let status: serde_json::Value = serde_json::from_str(&pincg(&["status", "--all", "--json"])?)?;
    let rows = status["cgroups"].as_array().context("status: no cgroups")?;
    let row = rows.iter().find(|r| r["cgroup"] == cgroup);
    Ok(row.and_then(|r| {
        let l = &r["limit"];
        l.is_object().then(|| {
            (l["max"].as_str().unwrap_or_default().to_string(), l["action"].as_str().unwrap_or_default().to_string())
        })
    }))
}

pub(super) fn expect_limit(cgroup: &str, expected: Option<(&str, &str)>) -> Result<()> {
    let got = limit_in_kernel(cgroup)?;
    let want = expected.map(|(m, a)| (m.to_string(), a.to_string()));
    ensure!(got == want, "{cgroup}: limit in the kernel is {got:?}, expected {want:?}");
    println!("   ok {cgroup}: limit in the kernel {got:?}");
    Ok(())
}

pub fn run() -> Result<()> {
    let root = match cri::root() {
        Ok(r) => r,
        Err(why) => {
            skip("nri", &why);
            return Ok(());
        }
    };
    // NRI runs on Kubernetes nodes: the agent is the DaemonSet's pod, NRI
    // enabled in its ConfigMap, the socket from its hostPath volume.
    let config = "mode = \"enforce\"\n[nri]\nenable = true\npod_default = \"64M\"\naction = \"kill\"\nraise_namespaces = [\"trusted\"]\n";
    step("the agent starts as the DaemonSet's pod, before containerd: no NRI socket yet, it keeps working and retries");
    let agent = Agent::start_as(&View::pod_configured(Some(config))?, &[])?;
    expect_metric("pincg_nri_connected 0")?;
    ensure!(agent.log_text().contains("/var/run/nri/nri.sock not available"), "no log line for the missing socket");

    step("containerd 1.7 with NRI enabled starts; pincg registers");
    let mut containerd = Containerd::start(&root)?;
    expect_metric("pincg_nri_connected 1")?;

    step("a pod annotated pincg.io/pins.max 32M: the limit is in the kernel when CreateContainer returns");
    fs::create_dir_all(OUT)?;
    let tenant = Pod::new("tenant", "vm-a", "11111111-aaaa")
        .annotate("pincg.io/pins.max", "32Mi")
        .annotate("pincg.io/pins.max.action", "kill");
    let cgroup = tenant.cgroup_parent();
    let sandbox = containerd.run_pod(&tenant)?;
    let workload_dir = sibling_binary("pincg-workload")?.parent().context("binary dir")?.to_string_lossy().into_owned();
    let fits = run_workload(&containerd, &tenant, &sandbox, "fits", "ring\nregister 16M\n", &workload_dir)?;
    expect_limit(&cgroup, Some(("33554432", "kill")))?;
    containerd.start_container(&fits)?;
    let pod = Cgroup { rel: cgroup.trim_start_matches('/').to_string() };
    expect_replies("fits", "ok\nok\n")?;
    pod.expect_current(16 * MIB)?;

    step("a second container of the pod registers 32 MiB more: over the pod's budget");
    let over = run_workload(&containerd, &tenant, &sandbox, "over", "ring\nregister 32M\n", &workload_dir)?;
    containerd.start_container(&over)?;
    let (refused, _) = io_uring_refused();
    // 7.x refuses the registration before pinning; before it, io_uring
    // pins before anyone can refuse and the pod's kill action applies.
    pod.expect_file("pins.events", "high 0\nmax 1\n")?;
    let replies = if refused { "ok\nerr " } else { "ok\n" };
    expect_replies("over", replies)?;
    if refused {
        let text = fs::read_to_string(Path::new(OUT).join("vm-a-over/replies"))?;
        ensure!(text.contains("Cannot allocate memory"), "over: {text:?}");
    }
    pod.expect_current(16 * MIB)?;

    step("VFIO in a third container of the pod: 8 MiB fit the budget, 16 MiB more are refused before pinning");
    let group = vfio_edu_group()?.to_string_lossy().into_owned();
    expect_hook("vfio:pin", 1)?;
    let commands = format!("open {group}\nmap 0x10000000 8M\nmap 0x20000000 16M\n");
    let dma = run_pinner(
        &containerd,
        &tenant,
        &sandbox,
        "dma",
        ("vfio", &commands),
        &workload_dir,
        (&["/dev/vfio/vfio", &group], &[]),
    )?;
    containerd.start_container(&dma)?;
    expect_replies("dma", "ok\nok\nerr ")?;
    let text = fs::read_to_string(Path::new(OUT).join("vm-a-dma/replies"))?;
    ensure!(text.contains("Cannot allocate memory"), "dma: {text:?}");
    pod.expect_current(24 * MIB)?;
    pod.expect_file("pins.events", "high 0\nmax 2\n")?;

    step("a pod without annotation gets the node default (64M); one that asks for more is refused and counted");
    let plain = Pod::new("tenant", "plain", "22222222-bbbb");
    let plain_sandbox = containerd.run_pod(&plain)?;
    let held = run_workload(&containerd, &plain, &plain_sandbox, "held", "ring\nregister 8M\n", &workload_dir)?;
    expect_limit(&plain.cgroup_parent(), Some(("67108864", "kill")))?;
    containerd.start_container(&held)?;
    expect_replies("held", "ok\nok\n")?;
    let greedy = Pod::new("tenant", "greedy", "33333333-cccc").annotate("pincg.io/pins.max", "1G");
    let greedy_sandbox = containerd.run_pod(&greedy)?;
    run_workload(&containerd, &greedy, &greedy_sandbox, "idle", "", &workload_dir)?;
    expect_limit(&greedy.cgroup_parent(), Some(("67108864", "kill")))?;
    expect_metric("pincg_nri_annotations_refused_total 1")?;
    let trusted = Pod::new("trusted", "big", "44444444-dddd")
        .annotate("pincg.io/pins.max", "1G")
        .annotate("pincg.io/pins.high", "512Mi");
    let trusted_sandbox = containerd.run_pod(&trusted)?;
    run_workload(&containerd, &trusted, &trusted_sandbox, "idle", "", &workload_dir)?;
    expect_limit(&trusted.cgroup_parent(), Some(("1073741824", "kill")))?;
    let status: serde_json::Value = serde_json::from_str(&pincg(&["status", "--all", "--json"])?)?;
    let high = status["cgroups"].as_array().and_then(|rows| {
        rows.iter().find(|r| r["cgroup"] == trusted.cgroup_parent().as_str()).map(|r| r["limit"]["high"].clone())
    });
    ensure!(high == Some("536870912".into()), "{}: pins.high in the kernel is {high:?}", trusted.cgroup_parent());
    println!("   ok {}: pins.high 536870912 from its annotation", trusted.cgroup_parent());
    expect_metric("pincg_nri_annotations_refused_total 1")?;

    step("the pod's series carry its namespace and name from NRI");
    let metrics = crate::scenario::http_get("/metrics")?;
    ensure!(
        metrics
            .lines()
            .any(|l| l.starts_with("pincg_pinned_bytes{") && l.contains("namespace=\"tenant\",pod=\"vm-a\"")),
        "no pinned series of tenant/vm-a:\n{metrics}"
    );

    step("the pod is deleted while a process outside it holds its ring: its limit goes, its 8 MiB stay charged");
    let kubepods = Cgroup { rel: "kubepods".into() };
    kubepods.expect_current(32 * MIB)?;
    let holder_cg = Cgroup::create("pincg-nri-holder")?;
    let mut holder = Workload::spawn("holder", &holder_cg, &["io_uring"])?;
    let pinner = pid_of_workload_in(&plain.cgroup_parent())?;
    holder.run(&format!("grab {pinner} anon_inode:[io_uring]"))?;
    containerd.delete_pod(&plain_sandbox)?;
    wait_for("the plain pod's limit is gone", || {
        let got = limit_in_kernel(&plain.cgroup_parent()).ok().flatten();
        (got.is_none(), format!("{got:?}"))
    })?;
    remove_cgroup(&plain.cgroup_parent())?;
    kubepods.expect_current(32 * MIB)?;
    holder_cg.expect_current(0)?;
    step("the holder lets go of the ring: the removed pod's 8 MiB are released");
    holder.run("drop-received")?;
    kubepods.expect_current(24 * MIB)?;
    crate::scenario::expect_no_drift()?;
    step("containerd restarts while the pods run: pincg reconnects, the limits stay");
    containerd.restart()?;
    expect_metric("pincg_nri_connected 1")?;
    expect_limit(&cgroup, Some(("33554432", "kill")))?;
    // containerd 1.7.24 sends no Stop/RemovePodSandbox to NRI plugins for
    // pods it recovered at a restart: the limit goes with the pod cgroup,
    // which the kubelet removes after RemovePodSandbox (as done here).
    containerd.delete_pod(&greedy_sandbox)?;
    remove_cgroup(&greedy.cgroup_parent())?;
    wait_for("the greedy pod's limit is gone after the restart", || {
        let got = limit_in_kernel(&greedy.cgroup_parent()).ok().flatten();
        (got.is_none(), format!("{got:?}"))
    })?;

    step("pods created while no agent runs get their budget from the initial synchronization");
    agent.kill()?;
    let mut late = Pod::new("tenant", "late", "55555555-eeee");
    late.memory_limit = 96 * MIB as i64;
    let late_sandbox = containerd.run_pod(&late)?;
    run_workload(&containerd, &late, &late_sandbox, "idle", "", &workload_dir)?;
    let mut launcher =
        Pod::new("vms", "virt-launcher-vm-b-x7k2p", "66666666-ffff").annotate("kubevirt.io/domain", "vm-b");
    launcher.labels.push(("kubevirt.io".into(), "virt-launcher".into()));
    launcher.memory_limit = 128 * MIB as i64;
    let launcher_sandbox = containerd.run_pod(&launcher)?;
    run_workload(&containerd, &launcher, &launcher_sandbox, "compute", "", &workload_dir)?;
    expect_limit(&late.cgroup_parent(), None)?;
    // The node policy now follows memory limits; KubeVirt's VM memory is
    // the pod's memory limit too, with the same overhead.
    let config = "mode = \"enforce\"\n[nri]\nenable = true\npod_default = \"none\"\noverhead = \"16M\"\n";
    let synced = Agent::start_as(&View::pod_configured(Some(config))?, &[])?;
    expect_metric("pincg_nri_connected 1")?;
    wait_for("the VM pod's budget from its memory limit", || {
        let got = limit_in_kernel(&launcher.cgroup_parent()).ok().flatten();
        (got == Some(("150994944".into(), "alert".into())), format!("{got:?}"))
    })?;
    expect_limit(&late.cgroup_parent(), None)?;
    expect_limit(&cgroup, Some(("33554432", "kill")))?;
    let metrics = crate::scenario::http_get("/metrics")?;
    let series = "namespace=\"vms\",pod=\"virt-launcher-vm-b-x7k2p\",pod_uid=\"66666666-ffff\",qos=\"guaranteed\",vm=\"vm-b\"} 150994944";
    ensure!(
        metrics.lines().any(|l| l.starts_with("pincg_limit_bytes{") && l.ends_with(series)),
        "no limit series of vms/virt-launcher-vm-b with vm=\"vm-b\":\n{metrics}"
    );
    println!("   ok pincg_limit_bytes of the VM pod carries namespace, pod and vm from NRI");

    step("node policy \"memory-limit\" with 16M overhead: a pod without annotation gets its 96 MiB limit + 16 MiB");
    synced.kill()?;
    let config = "mode = \"enforce\"\n[nri]\nenable = true\npod_default = \"memory-limit\"\noverhead = \"16M\"\n";
    let _agent = Agent::start_as(&View::pod_configured(Some(config))?, &[])?;
    expect_metric("pincg_nri_connected 1")?;
    wait_for("the late pod's budget from its memory limit", || {
        let got = limit_in_kernel(&late.cgroup_parent()).ok().flatten();
        (got == Some(((112 * MIB).to_string(), "alert".into())), format!("{got:?}"))
    })?;
    expect_limit(&cgroup, Some(("33554432", "kill")))?;
    drop(containerd);
    Ok(())
}

/// Create a container of `pod` that feeds `commands` to pincg-workload
/// io_uring and then holds what it pinned; its replies go to OUT/<name>.
fn run_workload(c: &Containerd, pod: &Pod, sandbox: &str, name: &str, commands: &str, bin: &str) -> Result<String> {
    run_pinner(c, pod, sandbox, name, ("io_uring", commands), bin, (&[], &[]))
}

/// The same with pincg-workload `kind`, and host `devices` and host
/// directories (`mounts`, read-only, at the same path) passed in. The
/// container's rlimits go to OUT/<name>/limits first.
pub(super) fn run_pinner(
    c: &Containerd,
    pod: &Pod,
    sandbox: &str,
    name: &str,
    (kind, commands): (&str, &str),
    bin: &str,
    (devices, mounts): (&[&str], &[&str]),
) -> Result<String> {
    let dir = Path::new(OUT).join(format!("{}-{name}", pod.name));
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("commands"), commands)?;
    let script = format!(
        "/bin/busybox cat /proc/self/limits > /pincg-out/limits; \
         (cat /pincg-out/commands; exec /bin/busybox sleep 2147483647) | /pincg/pincg-workload {kind} > /pincg-out/replies"
    );
    let dir = dir.to_string_lossy().into_owned();
    let mut binds = vec![("/usr", "/usr", true), (bin, "/pincg", true), (dir.as_str(), "/pincg-out", false)];
    binds.extend(mounts.iter().map(|m| (*m, *m, true)));
    c.create_container(pod, sandbox, name, &["/bin/busybox", "sh", "-c", &script], &binds, devices)
}

/// The pid of the pincg-workload process in pod cgroup `parent` (or a
/// container's cgroup below it).
fn pid_of_workload_in(parent: &str) -> Result<u32> {
    let mine = |pid: &str| -> Option<u32> {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let inside = cgroup.lines().any(|l| l.strip_prefix("0::").is_some_and(|p| p.starts_with(parent)));
        (comm.trim() == "pincg-workload" && inside).then(|| pid.parse().ok()).flatten()
    };
    fs::read_dir("/proc")?
        .flatten()
        .find_map(|e| mine(&e.file_name().to_string_lossy()))
        .with_context(|| format!("no pincg-workload process in {parent}"))
}

/// rmdir of a pod cgroup, as the kubelet does once the pod is removed
/// (runc removes the containers' cgroups below it as they go).
fn remove_cgroup(parent: &str) -> Result<()> {
    let dir = Path::new("/sys/fs/cgroup").join(parent.trim_start_matches('/'));
    wait_for(&format!("rmdir {}", dir.display()), || match fs::remove_dir(&dir) {
        Ok(()) => (true, "removed".into()),
        Err(e) => (false, e.to_string()),
    })
}

pub(super) fn expect_replies(name: &str, expected: &str) -> Result<()> {
    let file = fs::read_dir(OUT)?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("replies"))
        .find(|p| p.parent().is_some_and(|d| d.to_string_lossy().ends_with(&format!("-{name}"))))
        .context("no replies file")?;
    wait_for(&format!("{} = {expected:?}", file.display()), || {
        let got = fs::read_to_string(&file).unwrap_or_default();
        (if expected.ends_with("err ") { got.starts_with(expected) } else { got == expected }, got)
    })
}
