//! `pincg-upgrade-builds`: build the upgrade scenario's other pincg builds
//! next to this binary (tests/run-tests.sh runs it before the suite, so
//! that no guest scenario shares the CPUs with that build).

fn main() -> std::process::ExitCode {
    let me = std::env::current_exe().expect("the running binary's path");
    match pincg_tests::builds::build_next_to(&me) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pincg-upgrade-builds: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
