//! No tenant blinds the node by filling the usage map (one entry per
//! cgroup with pins). The agent runs under the systemd unit's settings
//! with `--ledger-cgroups 64` and keeps
//! 8 of its entries as placeholders, which only it removes, to make the
//! entry of a cgroup it gives a limit. A tenant with a 1 MiB pins.max
//! makes 70 child cgroups and maps a page in each: the BPF programs fill
//! the other 56 entries, the children past them have no entry of their own
//! and are charged at the tenant, still held to its limit. Then a VM given
//! an 8 MiB limit still gets its entry: it pins 8 MiB and is refused at
//! exactly its limit (without the reserve it would have found the map
//! full, and every request of it would have been refused). A cgroup
//! without a limit is charged at its ancestors. When the children go, the
//! reserve is whole again.

use anyhow::{ensure, Result};

use crate::devices::vfio_edu_group;
use crate::scenario::{
    expect_hook, expect_metric, expect_no_drift, ledger_event_count, map_entries, pincg, step, Agent, Cgroup, Workload,
    MIRROR_ROOT,
};

const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;
const CAPACITY: usize = 64;
/// The placeholders the agent keeps: the map's last eighth.
const RESERVE: usize = CAPACITY / 8;
/// More child cgroups than the programs may make entries for.
const CHILDREN: u64 = 70;

fn usage_entries() -> Result<usize> {
    Ok(map_entries()?.get("usage").copied().unwrap_or(0))
}

pub fn run() -> Result<()> {
    let parent = Cgroup::create("pincg-usage")?;
    let tenant = Cgroup::create("pincg-usage/tenant")?;
    // As the systemd unit ships it: its capabilities, sandbox and cgroup.
    let view = crate::shipped::View::unit()?;
    let _agent = Agent::start_as(&view, &["--mode", "enforce", "--ledger-cgroups", &CAPACITY.to_string()])?;
    expect_metric(&format!("pincg_ledger_capacity{{map=\"usage\"}} {CAPACITY}"))?;
    expect_metric(&format!("pincg_ledger_usage_reserve {RESERVE}"))?;
    let group = vfio_edu_group()?.to_string_lossy().into_owned();
    expect_hook("vfio:pin", 1)?;

    step("a tenant within its 1 MiB pins.max makes 70 child cgroups and maps 4 KiB in each: the usage map fills");
    println!("   {}", pincg(&["set", "/pincg-usage/tenant", "max", "1M"])?.trim());
    let mut t = Workload::spawn("tenant", &tenant, &["vfio"])?;
    t.run(&format!("open {group}"))?;
    for i in 0..CHILDREN {
        let child = Cgroup::create(&format!("pincg-usage/tenant/c{i}"))?;
        child.add(t.pid())?;
        t.run(&format!("map {:#x} 4K", (i + 1) << 32))?;
    }
    let entries = usage_entries()?;
    ensure!(entries == CAPACITY, "usage holds {entries} entries, not all {CAPACITY}");
    expect_metric(&format!("pincg_ledger_usage_reserve {RESERVE}"))?;
    println!("   ok usage is full: {} entries of cgroups, {RESERVE} kept for limits", CAPACITY - RESERVE);
    ensure!(ledger_event_count("usage_full")? > 0, "no usage_full event counted");
    // Children without an entry of their own are charged where the limit is.
    tenant.expect_current(CHILDREN * PAGE)?;
    t.expect_err(&format!("map {:#x} 1M", (CHILDREN + 1) << 32), "Cannot allocate memory")?;
    tenant.expect_current(CHILDREN * PAGE)?;

    step("a VM given an 8 MiB limit gets its entry from the reserve: 8 MiB pinned, 4 KiB more refused at its limit");
    let vm = Cgroup::create("pincg-usage/vm")?;
    println!("   {}", pincg(&["set", "/pincg-usage/vm", "max", "8M"])?.trim());
    expect_metric(&format!("pincg_ledger_usage_reserve {}", RESERVE - 1))?;
    // The tenant's container holds the VFIO group: the VM registers
    // io_uring buffers, and its refused request is an AF_XDP umem (a
    // refusal point on every kernel).
    let mut v = Workload::spawn("vm", &vm, &["io_uring"])?;
    v.run("ring")?;
    v.run("register 8M")?;
    vm.expect_current(8 * MIB)?;
    let mut over = Workload::spawn("vm-over", &vm, &["xdp"])?;
    over.run("socket")?;
    over.expect_err("umem 4K", "Cannot allocate memory")?;
    vm.expect_current(8 * MIB)?;
    vm.expect_file("pins.events.local", "high 0\nmax 1\n")?;

    step("a cgroup without a limit and without room for its own entry is charged at its ancestors");
    let free = Cgroup::create("pincg-usage/free")?;
    let mut f = Workload::spawn("free", &free, &["io_uring"])?;
    f.run("ring")?;
    f.run("register 1M")?;
    parent.expect_current(CHILDREN * PAGE + 8 * MIB + MIB)?;
    let root_current = std::fs::read_to_string(std::path::Path::new(MIRROR_ROOT).join("pins.current"))?;
    println!("   / pins.current {}", root_current.trim());

    step("everything released, the children removed: their entries go, the reserve is whole again");
    t.run("close")?;
    v.run("unregister")?;
    f.run("unregister")?;
    drop((t, v, f, over));
    parent.expect_current(0)?;
    tenant.expect_current(0)?;
    vm.expect_current(0)?;
    expect_no_drift()?;
    for i in 0..CHILDREN {
        std::fs::remove_dir(Cgroup { rel: format!("pincg-usage/tenant/c{i}") }.path())?;
    }
    expect_metric(&format!("pincg_ledger_usage_reserve {RESERVE}"))?;
    let entries = usage_entries()?;
    ensure!(entries < CAPACITY, "usage still full ({entries} entries) after the children went");
    println!("   ok usage holds {entries} entries");
    Ok(())
}
