//! memlock unlimited, made safe (docs/kubernetes-and-libvirt.md, "A VM's
//! budget"): a VMM whose RLIMIT_MEMLOCK is unlimited is held to its VM's
//! budget by pincg alone. Its guest RAM mapped by two VFIO containers,
//! registered with io_uring and as an RDMA memory region counts once; the
//! kernel's own counters count it four times and refuse nothing. Both
//! recipes: libvirt's hook with QEMU as libvirt-qemu, and the NRI plugin
//! with a KubeVirt-shaped pod on a real containerd.

use std::fs;
use std::path::Path;

use anyhow::{ensure, Context, Result};

use super::nri::{expect_limit, expect_replies, run_pinner, OUT};
use crate::cri::{self, Containerd, Pod};
use crate::devices::{allow_user, vfio_edu_groups};
use crate::rdma_setup::soft_roce;
use crate::scenario::{
    expect_hook, expect_metric, expect_no_drift, sibling_binary, skip, step, Agent, Cgroup, Workload,
};

const MIB: u64 = 1 << 20;
const CONFIG: &str = "/tmp/pincg-memlock.toml";
const QEMU_UID: u32 = 64055;
/// The cgroup libvirt gives domain 7, `vm-u` (the hook computes the same).
const VM: &str = r"machine.slice/machine-qemu\x2d7\x2dvm\x2du.scope";
const DOMAIN: &str = "<domain type='kvm' id='7'><name>vm-u</name><memory unit='MiB'>64</memory></domain>";

pub fn run() -> Result<()> {
    // As KubeVirt's virt-launcher and a libvirt host configured for
    // device assignment: nothing the kernel counts is limited. Children
    // (containerd and its containers, the VMM) inherit it.
    unlimited_memlock()?;
    fs::write(CONFIG, "mode = \"enforce\"\n[nri]\nenable = true\npod_default = \"none\"\noverhead = \"0\"\n")?;
    let agent = Agent::start_with(&["--config", CONFIG])?;
    let groups = vfio_edu_groups()?;
    ensure!(groups.len() >= 2, "two edu devices needed, found {}", groups.len());
    let device = soft_roce()?;
    expect_hook("vfio:refuse", 1)?;
    expect_hook("rdma:register", 1)?;

    libvirt(&groups, &device)?;

    let root = match cri::root() {
        Ok(r) => r,
        Err(why) => {
            skip("memlock: the NRI recipe", &why);
            return Ok(());
        }
    };
    kubevirt(&root, &groups, &device)?;
    ensure!(agent.running(), "the agent exited:\n{}", agent.log_text());
    Ok(())
}

fn unlimited_memlock() -> Result<()> {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads the struct we own.
    ensure!(
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0,
        "setrlimit(RLIMIT_MEMLOCK, unlimited): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// The commands of one VM's pins: its 64 MiB of guest RAM through every
/// source, then `over` of new memory.
fn vm_commands(groups: &[std::path::PathBuf], device: &str) -> Vec<String> {
    let mut c: Vec<String> =
        groups.iter().take(2).enumerate().map(|(n, g)| format!("vfio {n} open {}", g.display())).collect();
    c.extend(
        ["vfio 0 map-reuse 0x0 64M", "vfio 1 map-reuse 0x0 64M", "io_uring ring", "io_uring register-reuse 64M"]
            .map(String::from),
    );
    c.push(format!("rdma open {device}"));
    c.push("rdma reg-reuse 64M".into());
    c
}

/// libvirt: the hook writes the domain's budget (memory + PINCG_OVERHEAD)
/// before its cgroup exists; QEMU runs as libvirt-qemu with memlock
/// unlimited.
fn libvirt(groups: &[std::path::PathBuf], device: &str) -> Result<()> {
    step("libvirt's qemu hook at `start` of domain vm-u (64 MiB, PINCG_OVERHEAD=16M): pins.max before the cgroup");
    crate::libvirt::run_hook("vm-u", DOMAIN, &[("PINCG_OVERHEAD", "16M".as_ref())])?;
    let vm = Cgroup::create(VM)?;
    vm.expect_file("pins.max", &format!("{}\n", 80 * MIB))?;

    step("QEMU as libvirt-qemu, RLIMIT_MEMLOCK unlimited: guest RAM through 2 VFIO containers, io_uring, RDMA");
    for group in groups.iter().take(2) {
        allow_user(group, QEMU_UID)?;
    }
    let mut qemu = Workload::spawn_as("qemu", &vm, QEMU_UID, &["vm"])?;
    let limits = fs::read_to_string(format!("/proc/{}/limits", qemu.pid()))?;
    expect_unlimited("QEMU", &limits)?;
    for command in vm_commands(groups, device) {
        qemu.run(&command)?;
    }
    vm.expect_current(64 * MIB)?;
    vm.expect_stat(&[("vfio", 128 * MIB), ("io_uring", 64 * MIB), ("rdma", 64 * MIB), ("double_pinned", 192 * MIB)])?;
    kernel_counts(qemu.pid())?;

    step("new memory over the 80 MiB budget: refused before pinning (VFIO, RDMA); what fits is admitted at the byte");
    qemu.expect_err("vfio 0 map 0x10000000 32M", "Cannot allocate memory")?;
    qemu.expect_err("rdma reg 32M", "Cannot allocate memory")?;
    vm.expect_file("pins.events", "high 0\nmax 2\n")?;
    qemu.run("vfio 0 map 0x10000000 16M")?;
    vm.expect_current(80 * MIB)?;

    step("QEMU exits: everything returned");
    qemu.exit()?;
    vm.expect_current(0)?;
    expect_no_drift()
}

/// KubeVirt: the VM's budget from the virt-launcher pod (its memory limit,
/// overhead 0 here), in the kernel before the compute container starts.
fn kubevirt(root: &Path, groups: &[std::path::PathBuf], device: &str) -> Result<()> {
    step("containerd (NRI on) with memlock unlimited; a virt-launcher pod of 96 MiB");
    let containerd = Containerd::start(root)?;
    expect_metric("pincg_nri_connected 1")?;
    let mut launcher =
        Pod::new("vms", "virt-launcher-vm-u-q8w4z", "77777777-aaaa").annotate("kubevirt.io/domain", "vm-u");
    launcher.labels.push(("kubevirt.io".into(), "virt-launcher".into()));
    launcher.memory_limit = 96 * MIB as i64;
    let sandbox = containerd.run_pod(&launcher)?;
    fs::create_dir_all(OUT)?;

    step("its compute container pins the VM's 64 MiB through every source, then asks for 64 MiB more");
    let mut commands = vm_commands(groups, device);
    commands.push("vfio 0 map 0x10000000 64M".into());
    let uverbs = uverbs_device(device)?;
    let g: Vec<String> = groups.iter().take(2).map(|p| p.to_string_lossy().into_owned()).collect();
    let devices = ["/dev/vfio/vfio", &g[0], &g[1], &uverbs];
    let bin = sibling_binary("pincg-workload")?.parent().context("binary dir")?.to_string_lossy().into_owned();
    let compute = run_pinner(
        &containerd,
        &launcher,
        &sandbox,
        "compute",
        ("vm", &(commands.join("\n") + "\n")),
        &bin,
        (&devices, &["/etc/libibverbs.d"]),
    )?;
    expect_limit(&launcher.cgroup_parent(), Some(("100663296", "alert")))?;
    containerd.start_container(&compute)?;
    expect_replies("compute", &format!("{}err ", "ok\n".repeat(commands.len() - 1)))?;
    let limits = fs::read_to_string(Path::new(OUT).join(format!("{}-compute/limits", launcher.name)))?;
    expect_unlimited("the compute container", &limits)?;
    let pod = Cgroup { rel: launcher.cgroup_parent().trim_start_matches('/').to_string() };
    pod.expect_current(64 * MIB)?;
    pod.expect_stat(&[("vfio", 128 * MIB), ("io_uring", 64 * MIB), ("rdma", 64 * MIB), ("double_pinned", 192 * MIB)])?;
    pod.expect_file("pins.events", "high 0\nmax 1\n")?;

    step("the pod is deleted: its pins are returned");
    containerd.delete_pod(&sandbox)?;
    pod.expect_current(0)?;
    expect_no_drift()?;
    drop(containerd);
    Ok(())
}

fn expect_unlimited(who: &str, limits: &str) -> Result<()> {
    let line = limits.lines().find(|l| l.starts_with("Max locked memory")).context("no memlock line")?;
    ensure!(line.split_whitespace().filter(|w| *w == "unlimited").count() == 2, "{who}: {line}");
    println!("   ok {who}: {}", line.split_whitespace().collect::<Vec<_>>().join(" "));
    Ok(())
}

/// What the kernel's own counters say: four charges of the same RAM, none
/// refused (memlock unlimited).
fn kernel_counts(pid: u32) -> Result<()> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> Result<u64> {
        let line = status.lines().find(|l| l.starts_with(key)).with_context(|| format!("no {key}"))?;
        Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
    };
    let (locked, pinned) = (kib("VmLck:")?, kib("VmPin:")?);
    println!("   the kernel's own accounting: VmLck {locked} kB (VFIO, one charge per container), VmPin {pinned} kB");
    ensure!(locked == 131072, "expected VmLck 131072 kB, got {locked}");
    Ok(())
}

/// The uverbs character device of RDMA device `device`.
fn uverbs_device(device: &str) -> Result<String> {
    for entry in fs::read_dir("/sys/class/infiniband_verbs")? {
        let entry = entry?;
        let ibdev = fs::read_to_string(entry.path().join("ibdev")).unwrap_or_default();
        if ibdev.trim() == device {
            return Ok(format!("/dev/infiniband/{}", entry.file_name().to_string_lossy()));
        }
    }
    anyhow::bail!("no uverbs device of {device} in /sys/class/infiniband_verbs")
}
