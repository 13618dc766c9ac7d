//! The other pincg builds the upgrade scenario runs (host side): the same
//! source with `PINCG_BPF_DEFINES` (bpf/build.rs) changing only the BPF
//! objects. Both are built in one target directory of their own, so the
//! dependencies compile once for the two and the workspace's binaries are
//! never overwritten, then copied next to the scenario runner, where the
//! guest finds them.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::guest::workspace_root;

/// (binary name next to the runner, `-D` defines): build B changes program
/// code only, build C the layout of the `actions` map's value.
pub const BUILDS: [(&str, &str); 2] =
    [("pincg-build-b", "PINCG_TEST_PROGRAM_CHANGE"), ("pincg-build-c", "PINCG_TEST_LAYOUT_CHANGE")];

/// Build B and C (a no-op when up to date) and copy them beside `runner`.
pub fn build_next_to(runner: &Path) -> Result<(), String> {
    let target = workspace_root().join("target").join("upgrade-builds");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for (name, defines) in BUILDS {
        let status = Command::new(&cargo)
            .current_dir(workspace_root())
            .args(["build", "-p", "pincg", "--bin", "pincg"])
            .env("CARGO_TARGET_DIR", &target)
            .env("PINCG_BPF_DEFINES", defines)
            .status()
            .map_err(|e| format!("running cargo for {name}: {e}"))?;
        if !status.success() {
            return Err(format!("building {name} (PINCG_BPF_DEFINES={defines}) failed: {status}"));
        }
        let built = target.join("debug").join("pincg");
        let copy = runner.with_file_name(name);
        fs::copy(&built, &copy).map_err(|e| format!("copying {} to {}: {e}", built.display(), copy.display()))?;
    }
    Ok(())
}
