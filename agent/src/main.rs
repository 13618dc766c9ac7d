//! `pincg`: attribute long-term page pins to cgroups and report them.

mod agent;
mod cgroupfs;
mod columns;
mod config;
mod explain;
#[cfg(test)]
mod fixture;
mod health;
mod http;
mod labels;
mod limit_watch;
mod limits;
mod logging;
mod metrics;
mod mirror;
mod nri;
mod preexisting;
mod probe;
mod set;
mod snapshot;
mod status;
mod top;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pincg_bpf::btf::KernelBtf;
use pincg_bpf::ledger::{Ledger, Mode};
use pincg_bpf::loader;
use pincg_bpf::paths::{PinPaths, DEFAULT_PIN_ROOT};

#[derive(Parser)]
#[command(name = "pincg", version, about = "A pins cgroup controller: long-term page pins, attributed to cgroups")]
struct Cli {
    /// Where BPF programs and maps are pinned.
    #[arg(long, global = true, default_value = DEFAULT_PIN_ROOT)]
    pin_root: PathBuf,
    /// The cgroup v2 mount point [default: found in /proc/self/mountinfo].
    #[arg(long, global = true)]
    cgroup_root: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the BPF programs and keep the mirror tree and metrics current.
    Agent {
        /// Root of the mirror tree of pins.* files.
        #[arg(long, default_value = mirror::DEFAULT_ROOT)]
        mirror_root: PathBuf,
        /// How often the ledger is read, in milliseconds.
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        #[command(flatten)]
        config: config::Flags,
        /// Live pin objects the ledger can hold [default: 131072], fixed
        /// when the ledger is created: a ledger already pinned keeps its
        /// size (`pincg unload` drops it). Pins beyond it are not charged
        /// and count as ledger_full.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        ledger_objects: Option<u32>,
        /// Cgroups the ledger can keep usage for [default: 16384], fixed
        /// like --ledger-objects. The BPF programs fill it only up to 7/8;
        /// the last eighth is for cgroups given a limit.
        #[arg(long, value_parser = clap::value_parser!(u32).range(8..))]
        ledger_cgroups: Option<u32>,
    },
    /// Write a cgroup's pins.max, pins.high or pins.max.action and wait
    /// until the kernel enforces it.
    Set {
        /// The cgroup, as a path below the cgroup v2 root (`/machine.slice/vm-1.scope`).
        cgroup: String,
        /// `max`, `high` or `action`.
        key: set::Key,
        /// Bytes, a size such as `16G`, or `max`; for `action`: alert, kill or freeze.
        value: String,
        #[arg(long, default_value = mirror::DEFAULT_ROOT)]
        mirror_root: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Switch between monitor and enforce mode, keeping every count.
    Mode {
        mode: Mode,
        #[arg(long)]
        json: bool,
    },
    /// Print the cgroup tree with pinned bytes per source.
    Status {
        /// Show every cgroup, not just those with pins.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// The busiest cgroups, refreshed in place.
    Top {
        /// Refresh interval in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Stop after this many refreshes (0: until interrupted).
        #[arg(long, default_value_t = 0)]
        iterations: u64,
        /// How many cgroups to show.
        #[arg(long, default_value_t = 20)]
        rows: usize,
        /// One JSON line per refresh.
        #[arg(long)]
        json: bool,
    },
    /// Which objects pin what, for a process (pid) or a cgroup (path).
    Explain {
        /// A pid, or a cgroup path such as `/machine.slice/vm-1.scope`.
        subject: String,
        #[arg(long)]
        json: bool,
    },
    /// Print which hooks this kernel offers, without loading anything.
    Probe {
        #[arg(long)]
        json: bool,
    },
    /// Detach every program and drop the pinned ledger.
    Unload {
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain, each cause once (`chains_name_each_cause_once` in bpf/src/error.rs).
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let cgroup_root = || {
        cli.cgroup_root
            .clone()
            .or_else(cgroupfs::find_cgroup2)
            .context("no cgroup v2 hierarchy is mounted (no cgroup2 entry in /proc/self/mountinfo); pass --cgroup-root")
    };
    let pins = || -> anyhow::Result<PinPaths> { Ok(PinPaths::new(&cli.pin_root, cgroup_root()?)) };
    match cli.command {
        Command::Agent { mirror_root, interval_ms, config, ledger_objects, ledger_cgroups } => {
            let (config, origin) = config.load()?;
            let opts = agent::Options {
                configuration: origin.to_string(),
                pins: pins()?,
                mirror_root,
                listen: config.metrics.listen,
                interval: Duration::from_millis(interval_ms.max(10)),
                mode: config.mode,
                node_budget: config.node_budget,
                metrics: metrics::Filter {
                    all_cgroups: config.metrics.all_cgroups,
                    prefixes: config.metrics.cgroup_prefixes,
                },
                ledger: pincg_bpf::loader::LedgerCapacity { objects: ledger_objects, cgroups: ledger_cgroups },
                nri: config.nri,
            };
            tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(agent::run(opts))
        }
        Command::Status { all, json } => {
            let mut sampler = agent::Sampler::new(Ledger::open(&pins()?)?, pins()?, Vec::new());
            let snapshot = sampler.sample()?;
            if let Some(why) = &snapshot.scan_incomplete {
                eprintln!("pincg: the cgroup tree scan is incomplete ({why}): cgroups below it show as removed");
            }
            let rows = status::visible(&snapshot, all);
            if json {
                println!("{}", serde_json::to_string_pretty(&status::render_json(&rows, &snapshot))?);
            } else {
                print!("{}", status::render_table(&rows));
                println!("{} live pin objects", snapshot.objects);
            }
            Ok(())
        }
        Command::Top { interval_ms, iterations, rows, json } => {
            let mut sampler = agent::Sampler::new(Ledger::open(&pins()?)?, pins()?, Vec::new());
            top::run(&mut sampler, Duration::from_millis(interval_ms.max(50)), iterations, rows, json)
        }
        Command::Explain { subject, json } => {
            let ledger = Ledger::open(&pins()?)?;
            let tree = cgroupfs::CgroupTree::scan(&cgroup_root()?)?;
            let objects = ledger.objects()?;
            let rows = explain::select(&objects, &tree, &explain::Subject::parse(&subject), explain::boottime_ns());
            if json {
                println!("{}", serde_json::to_string_pretty(&explain::render_json(&rows))?);
            } else {
                print!("{}", explain::render_table(&rows));
            }
            Ok(())
        }
        Command::Probe { json } => {
            // What the kernel's policy lets run, read without changing the system.
            pincg_bpf::preflight::private_securityfs();
            let policy = pincg_bpf::preflight::Policy::read();
            let hooks = policy.restrict(loader::probe(&KernelBtf::load()?));
            if json {
                println!("{}", serde_json::to_string_pretty(&probe::render_json(&policy, &hooks))?);
            } else {
                print!("{}", probe::render_text(&policy, &hooks));
            }
            Ok(())
        }
        Command::Set { cgroup, key, value, mirror_root, json } => {
            let outcome = set::run(&pins()?, &mirror_root, &cgroup, key, &value)?;
            if json {
                println!("{}", outcome.to_json());
            } else {
                println!("{outcome}");
            }
            Ok(())
        }
        Command::Mode { mode, json } => {
            Ledger::open(&pins()?)?.set_mode(mode)?;
            if json {
                println!("{}", serde_json::json!({"mode": mode.to_string()}));
            } else {
                println!("mode {mode}: in force now");
            }
            Ok(())
        }
        Command::Unload { json } => {
            let paths = pins()?;
            loader::unload(&paths)?;
            if json {
                println!("{}", serde_json::json!({"unloaded": paths.root()}));
            } else {
                println!("detached every pincg program and dropped the ledger at {}", paths.root().display());
            }
            Ok(())
        }
    }
}
