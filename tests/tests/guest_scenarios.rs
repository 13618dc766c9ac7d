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
    match guest.own_series_skip(name, pinned) {
        Some(why) => println!("SKIPPED {name} on {}: {why}", guest.series),
        None => scenario(name, guest),
    }
}

#[test]
fn io_uring_end_to_end() {
    scenario("io-uring", Guest::default());
}

#[test]
fn agent_names_lockdown_on_a_confidentiality_kernel() {
    let guest = Guest { append: "lockdown=confidentiality".into(), ..Guest::default() };
    scenario("refuses-lockdown", guest);
}

/// The 6.13+ program variants (fexit register, io_free_rsrc_node release),
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
    scenario("owner-not-current", Guest { vfio: true, ..Guest::default() });
}

#[test]
fn rdma_soft_roce_end_to_end() {
    scenario("rdma", Guest { rdma_net: true, ..Guest::default() });
}

#[test]
fn budget_refused_at_exactly_the_byte() {
    scenario("budget", Guest { vfio: true, rdma_net: true, ..Guest::default() });
}

#[test]
fn pins_of_one_vm_count_once() {
    scenario("dedup", Guest { vfio: true, ..Guest::default() });
}

#[test]
fn node_budget_and_modes_from_the_config_file() {
    scenario("node-budget", Guest { vfio: true, ..Guest::default() });
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

#[test]
fn prometheus_scrapes_the_agent() {
    scenario("prometheus", Guest::default());
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
    scenario("hostile", Guest::default());
}

#[test]
fn hostile_tenant_cannot_escape_by_fork_exec_threads_move_or_race() {
    scenario("escape", Guest { vfio: true, ..Guest::default() });
}

#[test]
fn full_ledger_fails_open_counted_and_event_floods_survive() {
    scenario("exhaustion", Guest::default());
}

#[test]
fn removed_cgroups_and_modules_leak_nothing() {
    scenario("lifecycle", Guest { vfio: true, ..Guest::default() });
}

#[test]
fn pins_from_before_the_agent_are_reported() {
    scenario("preexisting", Guest::default());
}
