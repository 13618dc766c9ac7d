//! On a kernel that refuses BPF tracing, `pincg agent` must exit non-zero
//! within a second with one clear line that names the lockdown mode.
//! Whether this kernel refuses is decided before the agent runs, without
//! pincg's own code: the lockdown mode (confidentiality forbids reading
//! kernel memory from BPF) and `bpftool feature probe` (can a tracing
//! program load at all). Where the kernel runs tracing programs the check
//! does not apply: it is recorded as skipped, with why, and the agent is
//! never started on the host.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pincg_tests::guest::{record_skip, workspace_binary};

const LOCKDOWN: &str = "/sys/kernel/security/lockdown";

/// The active lockdown mode (`none [integrity] confidentiality`), read
/// through a securityfs mounted in a private mount namespace (the host's
/// mounts stay as they are).
fn lockdown_mode() -> Option<String> {
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!("mount -t securityfs securityfs /sys/kernel/security 2>/dev/null; cat {LOCKDOWN}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace().find_map(|w| w.strip_prefix('[')?.strip_suffix(']').map(str::to_string))
}

/// Whether a BPF tracing (fentry/fexit) program loads here, per bpftool.
fn tracing_loads() -> bool {
    let out = Command::new("bpftool").args(["feature", "probe", "kernel"]).output().expect("bpftool runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("eBPF program_type tracing "), "bpftool feature probe printed no tracing line:\n{text}");
    text.lines().any(|l| l == "eBPF program_type tracing is available")
}

#[test]
fn agent_refuses_a_kernel_without_bpf_tracing_in_one_line() {
    let lockdown = lockdown_mode();
    let mode = lockdown.as_deref().unwrap_or("unknown");
    let confidentiality = mode == "confidentiality";
    let tracing = tracing_loads();
    println!("this kernel: lockdown {mode}, tracing programs {}", if tracing { "load" } else { "refused" });
    if tracing && !confidentiality {
        let why = format!("this kernel runs BPF tracing programs (bpftool feature probe; lockdown {mode})");
        record_skip("host_kernel", "the refusal of a kernel without BPF tracing", &why);
        return;
    }

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
            panic!("pincg agent still runs after 1 s on a kernel that refuses BPF tracing (lockdown {mode})");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = started.elapsed();
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "pincg agent succeeded on a refusing kernel: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "expected one line, got:\n{stderr}");
    assert!(!stderr.contains("libbpf"), "libbpf noise leaked:\n{stderr}");
    assert!(stderr.starts_with("pincg: "), "not the agent's line: {stderr}");
    let names_mode = if confidentiality {
        stderr.contains("lockdown is in confidentiality mode")
    } else {
        stderr.contains(&format!("(lockdown mode: {mode})"))
    };
    assert!(names_mode, "the line does not name the lockdown mode {mode}: {stderr}");
    println!("refused in {elapsed:?}: {stderr}");
}

/// `pincg probe` says what this kernel really allows: where BPF tracing is
/// refused (lockdown confidentiality, or a tracing program that does not
/// load, per `bpftool feature probe`), every hook is unavailable and no
/// source is enforced, with the reason; where the BPF LSM is not active
/// (`bpf` missing from /sys/kernel/security/lsm), the LSM refusal points
/// are unavailable. Expectations come from securityfs (read in a private
/// mount namespace) and bpftool, not from pincg, so the test is right on
/// any machine.
#[test]
fn probe_tells_what_this_kernel_allows() {
    let pincg = workspace_binary("pincg", env!("CARGO_BIN_EXE_pincg-scenario"));
    let out = Command::new(&pincg).args(["probe", "--json"]).output().expect("pincg probe runs");
    assert!(out.status.success(), "pincg probe failed: {}", String::from_utf8_lossy(&out.stderr));
    let probe: serde_json::Value = serde_json::from_slice(&out.stdout).expect("probe --json prints JSON");
    let hooks = probe["hooks"].as_array().expect("a hook list");
    assert_eq!(hooks.len(), 18, "every hook is listed");

    let securityfs = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount -t securityfs securityfs /sys/kernel/security 2>/dev/null; cat /sys/kernel/security/lockdown; cat /sys/kernel/security/lsm")
        .output()
        .expect("unshare runs");
    let securityfs = String::from_utf8_lossy(&securityfs.stdout).into_owned();
    let confidentiality = securityfs.contains("[confidentiality]");
    let lsm_active = securityfs.lines().last().is_some_and(|l| l.trim().split(',').any(|m| m == "bpf"));
    let bpftool = Command::new("bpftool").args(["feature", "probe", "kernel"]).output().expect("bpftool runs");
    let tracing_loads =
        String::from_utf8_lossy(&bpftool.stdout).lines().any(|l| l == "eBPF program_type tracing is available");
    let refused = confidentiality || !tracing_loads;
    println!("securityfs: {securityfs:?}; tracing programs load: {tracing_loads}: probe must say refused = {refused}, bpf lsm active = {lsm_active}");

    let reason = |h: &serde_json::Value| h["reason"].as_str().unwrap_or_default().to_string();
    if refused {
        let tracing = probe["policy"]["tracing"].as_str().unwrap_or_default();
        assert!(tracing.starts_with("refused: ") && tracing.contains("lockdown"), "{probe:#}");
        for h in hooks {
            assert_eq!(h["state"], "unavailable", "{h}");
            assert_eq!(reason(h), "this kernel refuses BPF tracing programs, so no hook can attach", "{h}");
        }
        let enforcement = probe["enforcement"].as_object().expect("enforcement by source");
        assert_eq!(enforcement.len(), 6);
        for (source, word) in enforcement {
            assert_eq!(word, "none", "{source}");
            let why = probe["enforcement_reasons"][source].as_str().unwrap_or_default();
            assert!(
                why.ends_with("unavailable: this kernel refuses BPF tracing programs, so no hook can attach"),
                "{source}: {why}"
            );
        }
        return;
    }
    assert_eq!(probe["policy"]["tracing"], "allowed", "{probe:#}");
    assert_eq!(probe["policy"]["bpf_lsm"] == "active", lsm_active, "{probe:#}");
    let lsm_hooks = ["vfio:refuse", "iommufd:refuse", "rdma:refuse", "vduse:refuse"];
    for h in hooks.iter().filter(|h| lsm_hooks.contains(&h["hook"].as_str().unwrap_or_default())) {
        assert_eq!(reason(h).contains("BPF LSM is not active"), !lsm_active, "{h}");
    }
}
