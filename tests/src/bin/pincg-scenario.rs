//! `pincg-scenario <name>`: run one guest scenario (inside the guest).

use pincg_tests::scenarios::ALL;

fn main() -> std::process::ExitCode {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some((_, run)) = ALL.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = ALL.iter().map(|(n, _)| *n).collect();
        eprintln!("usage: pincg-scenario <{}>", names.join("|"));
        return std::process::ExitCode::from(2);
    };
    match run() {
        Ok(()) => {
            println!("scenario {name}: PASSED");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            println!("scenario {name}: FAILED: {e:#}");
            if let Ok(log) = std::fs::read_to_string("/tmp/pincg-agent.log") {
                println!("--- agent log ---\n{log}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
