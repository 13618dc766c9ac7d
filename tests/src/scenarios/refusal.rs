//! The agent on a kernel that cannot run it: one line, the cause named.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use crate::scenario::{sibling_binary, step};

/// Booted with `lockdown=confidentiality`: the agent must say so.
pub fn lockdown() -> Result<()> {
    step("pincg agent under lockdown=confidentiality");
    // Read the binary over 9p once first: the second is about pincg, not the share.
    Command::new(sibling_binary("pincg")?).arg("--version").output()?;
    let started = Instant::now();
    let out = Command::new(sibling_binary("pincg")?).arg("agent").output()?;
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("   {stderr}");
    ensure!(!out.status.success(), "the agent started under lockdown");
    // At once, before loading anything (loading takes 5-38 s under TCG);
    // the refusal itself took 0.2-1.9 s here, with the process start.
    ensure!(elapsed < Duration::from_secs(5), "took {elapsed:?} to refuse");
    ensure!(stderr.lines().count() == 1, "expected one line, got:\n{stderr}");
    ensure!(
        stderr.starts_with(
            "pincg: error: this kernel refuses pincg's BPF programs: kernel lockdown is in confidentiality mode"
        ),
        "the line does not name lockdown: {stderr}"
    );
    println!("   ok refused in {} ms", elapsed.as_millis());
    Ok(())
}
