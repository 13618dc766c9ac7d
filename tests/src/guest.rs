//! Host side of the guest harness: boot a Debian kernel under QEMU (via
//! `tests/guest/run-guest.sh`), run one command in it, return its output.
//!
//! Guest boots are serialised: two TCG guests on a 2-core machine would
//! only slow each other down and blur timings.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The kernel series when `PINCG_KERNEL` names none.
pub const DEFAULT_SERIES: &str = "6.12";

/// How to boot the guest.
#[derive(Debug, Clone)]
pub struct Guest {
    /// Kernel series: `6.12` (default), `6.1`, `7`, `iommufd`;
    /// `PINCG_KERNEL` overrides.
    pub series: String,
    pub timeout: Duration,
    /// Emulated IOMMU and `edu` device, for VFIO.
    pub vfio: bool,
    /// A restricted virtio-net NIC, for soft-RoCE.
    pub rdma_net: bool,
    /// Extra kernel command line arguments.
    pub append: String,
    /// Guest CPUs (`None`: run-guest.sh's 2). One where programs are
    /// attached to functions another task runs hot: multi-threaded TCG can
    /// execute the int3 of a finished live patch (a kernel Oops in
    /// `text_poke` territory that hardware does not show).
    pub cpus: Option<u32>,
}

impl Default for Guest {
    fn default() -> Guest {
        Guest {
            series: std::env::var("PINCG_KERNEL").unwrap_or_else(|_| DEFAULT_SERIES.into()),
            timeout: Duration::from_secs(300),
            vfio: false,
            rdma_net: false,
            append: String::new(),
            cpus: None,
        }
    }
}

/// What a guest run returned.
#[derive(Debug)]
pub struct GuestRun {
    /// The command's exit status; 124 timeout, 125 guest died (see
    /// run-guest.sh).
    pub status: i32,
    /// The command's stdout and stderr, merged.
    pub output: String,
    /// Harness messages (and the console tail when the guest died).
    pub harness: String,
    pub elapsed: Duration,
    /// The run's `--out` directory (the guest's `/mnt/out`).
    pub out_dir: PathBuf,
}

impl GuestRun {
    /// Panic with everything the guest said unless the command succeeded.
    pub fn assert_success(&self, scenario: &str) {
        assert!(
            self.status == 0,
            "guest scenario {scenario} failed with status {} after {:.0?}\n--- guest output ---\n{}\n--- harness ---\n{}",
            self.status,
            self.elapsed,
            self.output,
            self.harness
        );
    }
}

impl Guest {
    /// Run `command` (absolute program path plus arguments) in a fresh guest.
    /// A guest whose kernel dies of an int3 oops (a TCG vCPU running code
    /// another vCPU is patching: static keys, kprobes) boots once more; the
    /// verdict and the skips say so.
    pub fn run(&self, name: &str, command: &[&str]) -> GuestRun {
        let mut run = self.boot(name, command);
        let mut retried = "";
        if run.status == 125 && console_has(&run.out_dir, "Oops: int3") {
            let died = run.out_dir.with_extension("died");
            let _ = std::fs::remove_dir_all(&died);
            let _ = std::fs::rename(&run.out_dir, &died);
            record_skip(
                &format!("{name} on {}", self.series),
                "its first guest",
                &format!(
                    "the guest kernel died of an int3 oops under TCG (console in {}); booted again",
                    died.display()
                ),
            );
            retried = " (retried once, the first guest's kernel died of an int3 oops under TCG)";
            run = self.boot(name, command);
        }
        let verdict = match run.status {
            0 => "passed".to_string(),
            124 => "failed (timeout)".to_string(),
            s => format!("failed (status {s}{})", failure_reason(&run.output)),
        };
        // run-guest.sh writes cmd.sh once it holds the machine-wide guest
        // lock: the time before that was spent waiting for other guests.
        let in_guest = std::fs::metadata(run.out_dir.join("cmd.sh"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map_or(run.elapsed, |d| d.min(run.elapsed));
        let waited = run.elapsed - in_guest;
        record(&format!(
            "{name} on {}: {verdict}{retried} (after {:.1}s waiting for the guest lock) in {:.1}s",
            self.series,
            waited.as_secs_f64(),
            in_guest.as_secs_f64()
        ));
        for (what, why) in skipped_steps(&run.output) {
            record_skip(&format!("{name} on {}", self.series), what, why);
        }
        run
    }

    /// One boot of a fresh guest running `command`.
    fn boot(&self, name: &str, command: &[&str]) -> GuestRun {
        // One guest at a time: run-guest.sh takes the machine-wide guest
        // lock once its kernel is there.
        let out_dir = workspace_root().join("target").join("guest").join(&self.series).join(name);
        let _ = std::fs::remove_dir_all(&out_dir);
        let mut cmd = Command::new(workspace_root().join("tests/guest/run-guest.sh"));
        cmd.arg("--series").arg(&self.series);
        cmd.arg("--timeout").arg(self.timeout.as_secs().to_string());
        cmd.arg("--out").arg(&out_dir);
        if self.vfio {
            cmd.arg("--vfio");
        }
        if self.rdma_net {
            cmd.arg("--rdma-net");
        }
        if !self.append.is_empty() {
            cmd.arg("--append").arg(&self.append);
        }
        if let Some(cpus) = self.cpus {
            cmd.arg("--smp").arg(cpus.to_string());
        }
        cmd.arg("--").args(command);
        let started = Instant::now();
        let result = cmd.output().unwrap_or_else(|e| panic!("cannot run tests/guest/run-guest.sh: {e}"));
        GuestRun {
            status: result.status.code().unwrap_or(-1),
            output: String::from_utf8_lossy(&result.stdout).into_owned(),
            harness: String::from_utf8_lossy(&result.stderr).into_owned(),
            elapsed: started.elapsed(),
            out_dir,
        }
    }

    /// Why a scenario on a series of its own (`self.series`, not the one
    /// `PINCG_KERNEL` gives every other scenario) does not run in this
    /// pass of a `PINCG_KERNELS` matrix, recorded as skipped (in the first
    /// pass); `None`: it runs. It runs once, in the first pass; an
    /// [`Pinned::Extra`] run not at all when a pass is on its series (the
    /// scenario runs there).
    pub fn own_series_skip(&self, name: &str, pinned: Pinned) -> Option<String> {
        let kernels = std::env::var("PINCG_KERNELS").unwrap_or_default();
        let current = std::env::var("PINCG_KERNEL").unwrap_or_else(|_| DEFAULT_SERIES.into());
        let why = own_series_skip(&self.series, pinned, &current, &kernels)?;
        // Recorded once per matrix, in its first pass.
        if kernels.split_whitespace().next() == Some(current.as_str()) {
            record(&format!("{name} on {}: skipped ({why})", self.series));
            record_skip(&format!("{name} on {}", self.series), "the whole scenario", &why);
        } else {
            println!("SKIPPED {name} on {}: {why}", self.series);
        }
        Some(why)
    }
}

/// What a scenario pinned to a series is to a `PINCG_KERNELS` matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinned {
    /// The scenario exists only on that series (iommufd).
    Only,
    /// An extra run, on that series, of a scenario every pass runs.
    Extra,
}

/// See [`Guest::own_series_skip`]: `kernels` is the matrix (`PINCG_KERNELS`,
/// blank-separated, empty outside one), `current` this pass's series.
fn own_series_skip(series: &str, pinned: Pinned, current: &str, kernels: &str) -> Option<String> {
    let mut matrix = kernels.split_whitespace();
    let first = matrix.clone().next()?;
    if pinned == Pinned::Extra && matrix.any(|k| k == series) {
        Some(format!("the {series} pass of PINCG_KERNELS=\"{kernels}\" runs it"))
    } else if current != first {
        Some(format!("it ran in the first pass ({first}) of PINCG_KERNELS=\"{kernels}\""))
    } else {
        None
    }
}

/// Whether the console log of the guest that ran in `out_dir` has `text`.
fn console_has(out_dir: &Path, text: &str) -> bool {
    std::fs::read(out_dir.join("console.log")).is_ok_and(|log| String::from_utf8_lossy(&log).contains(text))
}

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// A workspace binary next to the test's own binaries (`target/<profile>`).
pub fn workspace_binary(name: &str, sibling: &str) -> PathBuf {
    let path = Path::new(sibling).with_file_name(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (tests/run-tests.sh does)",
        path.display()
    );
    path
}

/// Append one line per guest scenario (`<name> on <series>: <verdict>
/// (after <s> waiting for the guest lock) in <s>`, the last the time its
/// guest took) to
/// `target/guest-results.txt`, which `tests/run-tests.sh` summarises per
/// series after the suite.
fn record(line: &str) {
    append_line("guest-results.txt", line);
}

/// Record a skip (`<test>: <what>: <why>`) in `target/skips.txt`, which
/// `tests/run-tests.sh` prints in full after the suite: a guest scenario's
/// skipped step, a scenario not run in this pass, a host test that does not
/// apply here. Also printed, for the test's own output.
pub fn record_skip(test: &str, what: &str, why: &str) {
    println!("SKIPPED {test}: {what}: {why}");
    append_line("skips.txt", &format!("{test}: {what}: {why}"));
}

fn append_line(file: &str, line: &str) {
    use std::io::Write;
    let path = workspace_root().join("target").join(file);
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{line}");
    }
}

/// Why a scenario failed, from its `scenario <name>: FAILED: <error>` line,
/// shortened to one line (`: <error>`), so that the suite's summary, the
/// last thing CI prints, says it; empty when the guest printed no verdict.
fn failure_reason(output: &str) -> String {
    const MOST: usize = 240;
    let Some(error) = output.lines().find_map(|l| l.split_once(": FAILED: ").map(|(_, e)| e.trim())) else {
        return String::new();
    };
    let cut = error.char_indices().nth(MOST).map_or(error.len(), |(i, _)| i);
    format!(": {}{}", &error[..cut], if cut < error.len() { "..." } else { "" })
}

/// The steps a scenario skipped, from its output: `SKIPPED <what>: <why>`
/// lines (`scenario::skip`), as (what, why).
fn skipped_steps(output: &str) -> Vec<(&str, &str)> {
    output
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("SKIPPED "))
        .map(|rest| rest.split_once(": ").unwrap_or((rest, "no reason given")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Pinned::{Extra, Only};
    use super::{failure_reason, own_series_skip, skipped_steps};

    #[test]
    fn a_failure_says_why_in_one_line() {
        let output = "== step\n   ok x\nscenario nri: FAILED: pod p: no limit in the kernel: timed out\n";
        assert_eq!(failure_reason(output), ": pod p: no limit in the kernel: timed out");
        assert_eq!(failure_reason("the guest died\n"), "");
        let long = format!("scenario x: FAILED: {}\n", "é".repeat(300));
        assert_eq!(failure_reason(&long), format!(": {}...", "é".repeat(240)));
    }

    #[test]
    fn skipped_steps_come_from_the_scenario_output() {
        let output = "== step\n   SKIPPED CLONE_BUFFERS: the opcode arrived in 6.12\n   ok x\n   SKIPPED odd\nscenario io-uring: PASSED\n";
        assert_eq!(
            skipped_steps(output),
            vec![("CLONE_BUFFERS", "the opcode arrived in 6.12"), ("odd", "no reason given")]
        );
        assert!(skipped_steps("   ok SKIPPED is not at the start\n").is_empty());
    }

    #[test]
    fn a_scenario_on_its_own_series_runs_once_per_matrix() {
        let matrix = "PINCG_KERNELS=\"6.12 7\"";
        assert_eq!(own_series_skip("7", Extra, "6.12", ""), None, "no matrix: it runs");
        assert_eq!(own_series_skip("iommufd", Only, "6.12", "6.12 7"), None, "first pass");
        let ran = format!("it ran in the first pass (6.12) of {matrix}");
        assert_eq!(own_series_skip("iommufd", Only, "7", "6.12 7"), Some(ran));
        let covered = format!("the 7 pass of {matrix} runs it");
        assert_eq!(own_series_skip("7", Extra, "6.12", "6.12 7"), Some(covered));
        assert_eq!(own_series_skip("7", Extra, "6.1", "6.1"), None, "PINCG_KERNELS=6.1 alone");
        assert_eq!(own_series_skip("iommufd", Only, "iommufd", "iommufd"), None, "no other run of it");
    }
}
