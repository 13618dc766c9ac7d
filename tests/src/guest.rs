//! Host side of the guest harness: boot a Debian kernel under QEMU (via
//! `tests/guest/run-guest.sh`), run one command in it, return its output.
//!
//! Guest boots are serialised: two TCG guests on a 2-core machine would
//! only slow each other down and blur timings.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ONE_GUEST_AT_A_TIME: Mutex<()> = Mutex::new(());

/// How to boot the guest.
#[derive(Debug, Clone)]
pub struct Guest {
    /// Kernel series: `6.12` (default), `6.1`, `7`; `PINCG_KERNEL` overrides.
    pub series: String,
    pub timeout: Duration,
    /// Emulated IOMMU and `edu` device, for VFIO.
    pub vfio: bool,
    /// A restricted virtio-net NIC, for soft-RoCE.
    pub rdma_net: bool,
    /// Extra kernel command line arguments.
    pub append: String,
}

impl Default for Guest {
    fn default() -> Guest {
        Guest {
            series: std::env::var("PINCG_KERNEL").unwrap_or_else(|_| "6.12".into()),
            timeout: Duration::from_secs(300),
            vfio: false,
            rdma_net: false,
            append: String::new(),
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
    pub fn run(&self, name: &str, command: &[&str]) -> GuestRun {
        let _turn = ONE_GUEST_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let out_dir = workspace_root().join("target").join("guest").join(name);
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
        cmd.arg("--").args(command);
        let started = Instant::now();
        let result = cmd.output().unwrap_or_else(|e| panic!("cannot run tests/guest/run-guest.sh: {e}"));
        let run = GuestRun {
            status: result.status.code().unwrap_or(-1),
            output: String::from_utf8_lossy(&result.stdout).into_owned(),
            harness: String::from_utf8_lossy(&result.stderr).into_owned(),
            elapsed: started.elapsed(),
        };
        record(name, &self.series, &run);
        run
    }
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

/// Append one line per guest scenario to `target/guest-results.txt`, which
/// `tests/run-tests.sh` summarises after the suite.
fn record(name: &str, series: &str, run: &GuestRun) {
    use std::io::Write;
    let verdict = match run.status {
        0 => "passed".to_string(),
        124 => "failed (timeout)".to_string(),
        s => format!("failed (status {s})"),
    };
    let path = workspace_root().join("target").join("guest-results.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{name} on {series}: {verdict} in {:.1}s", run.elapsed.as_secs_f64());
    }
}
