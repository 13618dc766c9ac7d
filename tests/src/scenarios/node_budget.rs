//! The configuration file and the node-wide budget: an agent started from a
//! file with `mode = "enforce"` and a 96 MiB `node_budget`, no per-cgroup
//! limits. Pins from two cgroups fill the budget to the byte and the next
//! one is refused (VFIO MAP_DMA, decided in BPF at the root cgroup's
//! limit); `--mode monitor` overrides the file; `pincg mode` switches back
//! at runtime with every count kept; an agent without a budget lifts it.

use std::process::Command;

use anyhow::{ensure, Result};

use crate::devices::vfio_edu_group;
use crate::scenario::{
    expect_hook, expect_metric, expect_no_drift, http_get, pincg, sibling_binary, step, Agent, Cgroup, Workload,
};

const MIB: u64 = 1 << 20;
const CONFIG: &str = "/tmp/pincg-node-budget.toml";

pub fn run() -> Result<()> {
    let root = Cgroup { rel: String::new() };
    let web = Cgroup::create("pincg-node/web")?;
    let db = Cgroup::create("pincg-node/db")?;
    std::fs::write(CONFIG, "mode = \"enforce\"\nnode_budget = 100663296 # 96 MiB\n")?;

    step("a configuration file named with --config that does not exist is an error");
    let out = Command::new(sibling_binary("pincg")?).args(["agent", "--config", "/tmp/absent.toml"]).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && stderr.ends_with(
                "pincg: error: configuration file /tmp/absent.toml: No such file or directory (os error 2)\n"
            ),
        "pincg agent --config /tmp/absent.toml: {}: {stderr}",
        out.status
    );

    step("the agent starts from the file: enforce mode, a node budget of 96 MiB");
    let agent = Agent::start_with(&["--config", CONFIG])?;
    let group = vfio_edu_group()?.to_string_lossy().into_owned();
    expect_hook("vfio:pin", 1)?;
    expect_hook("vfio:refuse", 1)?;
    expect_hook("xdp:refuse", 1)?;
    expect_metric("pincg_mode{mode=\"enforce\"} 1")?;
    expect_metric("pincg_node_budget_bytes 100663296")?;
    // The budget is the root cgroup's limit in force; the mirror root's own
    // pins.max keeps what was written there.
    root.expect_file("pins.max", "max\n")?;
    let status = pincg(&["status", "--json"])?;
    ensure!(status.contains("\"max\": \"100663296\""), "the root's limit is not the node budget:\n{status}");

    step("web maps 64 MiB (VFIO), db registers a 32 MiB umem (AF_XDP): the node budget is full to the byte");
    let mut qemu = Workload::spawn("web-qemu", &web, &["vfio"])?;
    qemu.run(&format!("open {group}"))?;
    qemu.run("map 0x10000000 64M")?;
    let mut xsk = Workload::spawn("db-xsk", &db, &["xdp"])?;
    xsk.run("socket")?;
    xsk.run("umem 32M")?;
    web.expect_current(64 * MIB)?;
    db.expect_current(32 * MIB)?;
    root.expect_current(96 * MIB)?;

    step("the next 16 MiB is refused with ENOMEM, and so is a single page");
    qemu.expect_err("map 0x20000000 16M", "Cannot allocate memory")?;
    qemu.expect_err("map 0x20000000 4K", "Cannot allocate memory")?;
    root.expect_current(96 * MIB)?;
    root.expect_file("pins.events.local", "high 0\nmax 2\n")?;
    expect_metric("pincg_refusals_total{outcome=\"refused\",source=\"vfio\"} 2")?;

    step("--mode monitor overrides the file: the 16 MiB goes through, counted as would_refuse");
    agent.kill()?;
    let agent = Agent::start_with(&["--config", CONFIG, "--mode", "monitor"])?;
    expect_metric("pincg_mode{mode=\"monitor\"} 1")?;
    expect_metric("pincg_node_budget_bytes 100663296")?;
    qemu.run("map 0x20000000 16M")?;
    web.expect_current(80 * MIB)?;
    root.expect_current(112 * MIB)?;
    expect_metric("pincg_refusals_total{outcome=\"would_refuse\",source=\"vfio\"} 1")?;
    expect_metric("pincg_refusals_total{outcome=\"refused\",source=\"vfio\"} 2")?;

    step("pincg mode enforce at runtime: refusals again, every count and charge kept");
    println!("   {}", pincg(&["mode", "enforce"])?.trim());
    expect_metric("pincg_mode{mode=\"enforce\"} 1")?;
    qemu.expect_err("map 0x30000000 4K", "Cannot allocate memory")?;
    web.expect_current(80 * MIB)?;
    db.expect_current(32 * MIB)?;
    root.expect_current(112 * MIB)?;
    expect_metric("pincg_refusals_total{outcome=\"refused\",source=\"vfio\"} 3")?;
    expect_metric("pincg_refusals_total{outcome=\"would_refuse\",source=\"vfio\"} 1")?;

    step("an agent started without a node budget removes the one left in force");
    agent.kill()?;
    std::fs::write(CONFIG, "mode = \"enforce\"\n")?;
    let _agent = Agent::start_with(&["--config", CONFIG])?;
    expect_metric("pincg_mode{mode=\"enforce\"} 1")?;
    let status = pincg(&["status", "--json"])?;
    ensure!(!status.contains("\"max\": \"100663296\""), "the node budget is still in force:\n{status}");
    ensure!(!http_get("/metrics")?.contains("\npincg_node_budget_bytes "), "a node budget series without a budget");
    qemu.run("map 0x30000000 4K")?;
    root.expect_current(112 * MIB + 4096)?;

    step("releasing returns the budget");
    qemu.run("close")?;
    xsk.run("close")?;
    web.expect_current(0)?;
    db.expect_current(0)?;
    expect_no_drift()
}
