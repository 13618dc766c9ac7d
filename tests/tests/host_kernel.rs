//! On a kernel that refuses BPF tracing (the development and CI machines),
//! `pincg agent` must exit non-zero within a second with one clear line.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pincg_tests::guest::workspace_binary;

#[test]
fn agent_refuses_a_kernel_without_bpf_tracing_in_one_line() {
    let pincg = workspace_binary("pincg", env!("CARGO_BIN_EXE_pincg-scenario"));
    let started = Instant::now();
    let mut child = Command::new(pincg)
        .args(["agent", "--listen", "127.0.0.1:0", "--pin-root", "/sys/fs/bpf/pincg-host-test"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pincg starts");
    while child.try_wait().expect("wait works").is_none() {
        if started.elapsed() > Duration::from_secs(1) {
            child.kill().ok();
            let _ = child.wait();
            let _ = Command::new(workspace_binary("pincg", env!("CARGO_BIN_EXE_pincg-scenario")))
                .args(["unload", "--pin-root", "/sys/fs/bpf/pincg-host-test"])
                .status();
            println!("SKIPPED: this host runs BPF tracing programs, so the wrong-kernel check does not apply here");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = started.elapsed();
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "pincg agent succeeded on a refusing kernel: {stderr}");
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    assert_eq!(stderr.lines().count(), 1, "expected one line, got:\n{stderr}");
    assert!(!stderr.contains("libbpf"), "libbpf noise leaked:\n{stderr}");
    let known = ["lockdown", "BTF", "capability", "trampolines", "forbids BPF tracing", "BPF filesystem"];
    assert!(
        stderr.starts_with("pincg: ") && known.iter().any(|k| stderr.contains(k)),
        "the line names no cause: {stderr}"
    );
    println!("refused in {elapsed:?}: {stderr}");
}
