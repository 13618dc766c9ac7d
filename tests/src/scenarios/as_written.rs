//! Limits are put in force as they are written, not at the next round: with
//! the agent's rounds a minute apart, a limit set by root (`pincg set`: a
//! file renamed over the old one) and one written in place (`echo >`, as a
//! delegatee or a script writes) are in force, and rewritten in canonical
//! form, long before the next round could have read them. The agent runs
//! under the systemd unit's settings, as it ships.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use crate::scenario::{pincg, step, Agent, Cgroup};

/// The agent's round interval here: no round runs during the scenario.
const ROUNDS_APART: Duration = Duration::from_secs(120);

pub fn run() -> Result<()> {
    let vm = Cgroup::create("pincg-as-written/vm")?;
    let interval = ROUNDS_APART.as_millis().to_string();
    // As it ships: under the systemd unit's capabilities and sandbox.
    let view = crate::shipped::View::unit()?;
    let _agent = Agent::start_as(&view, &["--mode", "enforce", "--interval-ms", &interval])?;
    // The round run at start made the mirror directory and its watch.
    let started = Instant::now();
    vm.expect_file("pins.max", "max\n")?;

    step("root's pincg set (a file renamed over): in force before any round");
    println!("   {}", pincg(&["set", "/pincg-as-written/vm", "max", "8M"])?.trim());
    expect_in_kernel("8388608")?;

    step("a write in place (echo >): in force and rewritten in canonical form before any round");
    std::fs::write(vm.mirror("pins.max"), "4M")?;
    vm.expect_file("pins.max", "4194304\n")?;
    expect_in_kernel("4194304")?;

    step("garbage written in place leaves the limit in force");
    std::fs::write(vm.mirror("pins.max"), ".5G")?;
    std::thread::sleep(Duration::from_secs(1));
    expect_in_kernel("4194304")?;
    ensure!(started.elapsed() < ROUNDS_APART, "took {:?}: a round may have put the limits in force", started.elapsed());
    Ok(())
}

/// The BPF limits map holds `max` for the scenario's cgroup.
fn expect_in_kernel(max: &str) -> Result<()> {
    let status = pincg(&["status", "--json", "--all"])?;
    ensure!(status.contains(&format!("\"max\": \"{max}\"")), "pins.max {max} not in force:\n{status}");
    Ok(())
}
