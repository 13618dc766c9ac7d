//! Guest scenarios, booted under QEMU from `cargo test`. A failing scenario
//! fails here with the guest's whole output.

use pincg_tests::guest::{workspace_binary, Guest};

fn scenario(name: &str, guest: Guest) {
    let runner = env!("CARGO_BIN_EXE_pincg-scenario");
    workspace_binary("pincg", runner);
    let run = guest.run(name, &[runner, name]);
    println!("{}", run.output);
    run.assert_success(name);
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
