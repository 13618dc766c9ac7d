//! Guest scenarios, booted under QEMU from `cargo test`. A failing scenario
//! fails here with the guest's whole output. Each runs on the series
//! `PINCG_KERNEL` names (6.12 by default), except those that name their
//! own (`scenario_on_own_series`).

use pincg_tests::guest::{workspace_binary, Guest, Pinned};

/// Run scenario `name` (a `pincg-scenario` name, optionally suffixed with
/// `-<kernel>` to keep results apart) in `guest`.
fn scenario(name: &str, guest: Guest) {
    let runner = env!("CARGO_BIN_EXE_pincg-scenario");
    workspace_binary("pincg", runner);
    let scenario = name.strip_suffix("-7x").unwrap_or(name);
    let run = guest.run(name, &[runner, scenario]);
    println!("{}", run.output);
    run.assert_success(name);
}

/// Scenario `name` on the series `guest` names, whatever `PINCG_KERNEL`
/// says: once per `PINCG_KERNELS` matrix (see `Guest::own_series_skip`).
fn scenario_on_own_series(name: &str, pinned: Pinned, guest: Guest) {
    if guest.own_series_skip(name, pinned).is_none() {
        scenario(name, guest);
    }
}

/// Scenario `name`, whose subject is userspace (an HTTP scraper, a
/// container runtime, a deployment recipe, the agent's privileges, its
/// mirror files, the config file, the ledger's own bookkeeping) and whose
/// pin paths other scenarios cover on every series: in the first pass of a
/// `PINCG_KERNELS` matrix only, which keeps the matrix within CI's time.
/// `before` runs first when it does run (fetching a runtime).
fn scenario_in_first_pass(name: &str, guest: Guest, before: fn()) {
    if guest.own_series_skip(name, Pinned::Only).is_none() {
        before();
        scenario(name, guest);
    }
}

/// For a scenario that needs nothing fetched first.
fn no_setup() {}

#[test]
fn io_uring_end_to_end() {
    scenario("io-uring", Guest::default());
}

#[test]
fn agent_names_lockdown_on_a_confidentiality_kernel() {
    let guest = Guest { append: "lockdown=confidentiality".into(), ..Guest::default() };
    scenario("refuses-lockdown", guest);
}

/// The 6.13+ program variants (kprobe/kretprobe register, io_free_rsrc_node release),
/// on Debian's newest 7.x kernel.
#[test]
fn io_uring_end_to_end_on_7x() {
    scenario_on_own_series("io-uring-7x", Pinned::Extra, Guest { series: "7".into(), ..Guest::default() });
}

#[test]
fn xdp_umem_end_to_end() {
    scenario("xdp", Guest::default());
}

#[test]
fn vduse_umem_end_to_end() {
    scenario("vduse", Guest::default());
}

/// The 7.x program variant (address spaces: `dev->as[asid].umem`, a
/// 4-parameter `vduse_dev_dereg_umem`), on Debian's newest 7.x kernel.
#[test]
fn vduse_umem_end_to_end_on_7x() {
    scenario_on_own_series("vduse-7x", Pinned::Extra, Guest { series: "7".into(), ..Guest::default() });
}

#[test]
fn vfio_type1_end_to_end() {
    scenario("vfio", Guest { vfio: true, ..Guest::default() });
}

#[test]
fn owner_not_current_after_fd_handover() {
    scenario_in_first_pass("owner-not-current", Guest { vfio: true, ..Guest::default() }, no_setup);
}

#[test]
fn rdma_soft_roce_end_to_end() {
    scenario("rdma", Guest { rdma_net: true, ..Guest::default() });
}

#[test]
fn budget_refused_at_exactly_the_byte() {
    scenario("budget", Guest { vfio: true, rdma_net: true, ..Guest::default() });
}

/// 1 TiB claims refused at O(1); concurrent requests reserve (4.3 of issue 11).
#[test]
fn admission_is_bounded_and_reserves() {
    scenario("admission", Guest { vfio: true, rdma_net: true, ..Guest::default() });
}

/// The same on 7.x, where io_uring registrations are refused before pinning.
#[test]
fn admission_is_bounded_and_reserves_on_7x() {
    scenario_on_own_series(
        "admission-7x",
        Pinned::Extra,
        Guest { series: "7".into(), vfio: true, rdma_net: true, ..Guest::default() },
    );
}

#[test]
fn pins_of_one_vm_count_once() {
    scenario("dedup", Guest { vfio: true, ..Guest::default() });
}

/// memlock unlimited, made safe: libvirt's hook and the NRI plugin hold a
/// VMM whose RLIMIT_MEMLOCK is unlimited to its VM's budget.
#[test]
fn memlock_unlimited_is_held_to_the_vms_budget() {
    scenario_in_first_pass(
        "memlock",
        Guest { vfio: true, rdma_net: true, timeout: std::time::Duration::from_secs(600), ..Guest::default() },
        fetch_containerd,
    );
}

#[test]
fn node_budget_and_modes_from_the_config_file() {
    scenario_in_first_pass("node-budget", Guest { vfio: true, ..Guest::default() }, no_setup);
}

#[test]
fn overrun_actions_and_high_crossings() {
    scenario("actions", Guest::default());
}

/// 7.x refuses io_uring registrations before pinning (fmod_ret on
/// io_uring_register), at exactly the byte.
#[test]
fn io_uring_refused_before_pinning_on_7x() {
    scenario_on_own_series("actions-7x", Pinned::Extra, Guest { series: "7".into(), ..Guest::default() });
}

/// containerd and runc on the host (cached; the guest sees the host root
/// read-only), once for every scenario that runs them.
fn fetch_containerd() {
    static FETCHED: std::sync::Once = std::sync::Once::new();
    FETCHED.call_once(|| {
        let fetch = pincg_tests::guest::workspace_root().join("tests/guest/fetch-containerd.sh");
        match std::process::Command::new(&fetch).status() {
            Ok(s) if s.success() => {}
            other => println!("{}: {other:?}; the scenario will skip", fetch.display()),
        }
    });
}

/// pincg as an NRI plugin of Debian's containerd 1.7 with runc, over CRI.
/// containerd and runc are fetched on the host first (cached; the guest
/// sees the host root read-only); without them the scenario says SKIPPED.
#[test]
fn nri_plugin_with_a_real_containerd() {
    let guest = Guest { vfio: true, timeout: std::time::Duration::from_secs(600), ..Guest::default() };
    scenario_in_first_pass("nri", guest, fetch_containerd);
}

#[test]
fn prometheus_scrapes_the_agent() {
    scenario_in_first_pass("prometheus", Guest::default(), || {});
}

/// On the custom kernel with iommufd, built by the harness on first use
/// (about 15 minutes on 2 cores) and cached.
#[test]
fn iommufd_end_to_end() {
    scenario_on_own_series("iommufd", Pinned::Only, Guest { series: "iommufd".into(), vfio: true, ..Guest::default() });
}

#[test]
fn sigkill_mid_storm_loses_nothing() {
    scenario("storm", Guest { vfio: true, ..Guest::default() });
}

#[test]
fn hostile_tenant_cannot_escape() {
    scenario_in_first_pass("hostile", Guest::default(), no_setup);
}

#[test]
fn hostile_tenant_cannot_escape_by_fork_exec_threads_move_or_race() {
    scenario("escape", Guest { vfio: true, ..Guest::default() });
}

#[test]
fn full_ledger_fails_open_counted_and_event_floods_survive() {
    scenario_in_first_pass("exhaustion", Guest { vfio: true, ..Guest::default() }, no_setup);
}

/// A tenant filling the usage map with child cgroups leaves a limit set
/// later the entry it is checked against (the agent's reserve).
#[test]
fn a_full_usage_map_blinds_no_limit() {
    scenario_in_first_pass("usage-room", Guest { vfio: true, ..Guest::default() }, no_setup);
}

#[test]
fn removed_cgroups_and_modules_leak_nothing() {
    scenario_in_first_pass("lifecycle", Guest { vfio: true, ..Guest::default() }, no_setup);
}

#[test]
fn pins_from_before_the_agent_are_reported() {
    scenario("preexisting", Guest::default());
}

/// The agent under deploy/systemd/pincg.service's settings, on a host with
/// delegated user cgroups, a libvirt-written budget and a non-root QEMU.
#[test]
fn the_systemd_unit_as_shipped() {
    scenario_in_first_pass("shipped-unit", Guest { vfio: true, ..Guest::default() }, no_setup);
}

/// The same under the DaemonSet's pod: its capabilities, namespaces,
/// volumes and read-only root.
#[test]
fn the_daemonset_pod_as_shipped() {
    scenario_in_first_pass("shipped-pod", Guest { vfio: true, ..Guest::default() }, no_setup);
}

/// status, top, explain, probe and --json with a wrong --cgroup-root leave
/// every map and mirror file as it was; the limit in force still refuses.
#[test]
fn reads_never_write() {
    scenario_in_first_pass("reads-never-write", Guest::default(), no_setup);
}

/// Limits written by root and in place are in force with rounds two
/// minutes apart: the agent reacts to the write, not to its next round.
#[test]
fn limits_are_in_force_as_written() {
    scenario_in_first_pass("limits-as-written", Guest::default(), no_setup);
}

/// A cgroup delegated to uid 1000 under the unit's capabilities: the
/// delegatee's limit files, pincg set without BPF access, a restart with an
/// empty /run/pincg that keeps the limits in force.
#[test]
fn delegation_under_the_units_capabilities() {
    scenario_in_first_pass("delegation", Guest::default(), no_setup);
}

/// Debian's default lsm= list without bpf: probe and the enforcement
/// metric say the LSM refusal points are inactive, and they are.
#[test]
fn probe_and_metrics_say_when_the_bpf_lsm_is_inactive() {
    let guest =
        Guest { vfio: true, append: "lsm=landlock,lockdown,yama,integrity,apparmor".into(), ..Guest::default() };
    scenario_in_first_pass("lsm-inactive", guest, no_setup);
}

#[test]
fn upgrade_keeps_the_ledger() {
    // One CPU: the scenario registers buffers in a loop while build B
    // attaches to the functions that loop runs (see Guest::cpus).
    scenario_in_first_pass("upgrade", Guest { vfio: true, cpus: Some(1), ..Guest::default() }, upgrade_builds);
}

/// Builds B and C (tests/run-tests.sh makes them before the suite; a no-op then).
fn upgrade_builds() {
    let runner = env!("CARGO_BIN_EXE_pincg-scenario");
    pincg_tests::builds::build_next_to(std::path::Path::new(runner)).expect("building pincg builds B and C");
}

/// Every program's verified instructions within its budget for this
/// series (tests/verifier-budget.toml). With `PINCG_VERIFIER_RECORD=1` the
/// guest measures instead, and the file gets this series' counts.
#[test]
fn verifier_headroom_within_budget() {
    use pincg_tests::scenarios::verifier_budget::{BUDGET_FILE, RECORD_ENV, RECORD_FILE};
    let runner = env!("CARGO_BIN_EXE_pincg-scenario");
    workspace_binary("pincg", runner);
    let guest = Guest::default();
    let run = guest.run("verifier-budget", &[runner, "verifier-budget"]);
    println!("{}", run.output);
    run.assert_success("verifier-budget");
    if std::env::var_os(RECORD_ENV).is_some() {
        let target = pincg_tests::guest::workspace_root().join(BUDGET_FILE);
        std::fs::copy(run.out_dir.join(RECORD_FILE), &target).expect("copying the recorded budgets");
        println!("recorded series {} in {}", guest.series, target.display());
    }
}
