//! Verifier headroom: the instructions the verifier processed to accept each
//! program pincg attached (`bpf_prog_info.verified_insns`), against a budget
//! per kernel series kept in tests/verifier-budget.toml. A program that grows
//! past its budget fails here, long before a kernel's 1,000,000-instruction
//! limit refuses it.
//!
//! "Not on this kernel" is told apart from "refused" by `pincg probe`: a hook
//! it calls unavailable (a function or module this kernel lacks, a release
//! too old) has no budget on this series; a hook it calls attachable must be
//! attached by the agent, or the kernel refused its program.
//!
//! `PINCG_VERIFIER_RECORD=1` re-measures: the guest writes the budget file
//! with this series' counts to `/mnt/out`, and the host test copies it over
//! tests/verifier-budget.toml (see docs/testing.md).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::guest::workspace_root;
use crate::scenario::{http_get, pincg, step, tool, wait_for, Agent, CGROUP_ROOT};

/// The budget file, relative to the workspace root.
pub const BUDGET_FILE: &str = "tests/verifier-budget.toml";
/// Set (to anything) to record this series' counts instead of checking them.
pub const RECORD_ENV: &str = "PINCG_VERIFIER_RECORD";
/// What a recording guest writes into its `--out` directory.
pub const RECORD_FILE: &str = "verifier-budget.toml";
/// The guest's side of `--out`.
const GUEST_OUT: &str = "/mnt/out";
/// BPF_COMPLEXITY_LIMIT_INSNS: the verifier refuses a program that needs more.
pub const VERIFIER_LIMIT: u64 = 1_000_000;

/// What tests/verifier-budget.toml holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budgets {
    /// How much a program may grow over its measured count before it fails.
    pub margin_percent: u64,
    /// The least growth allowed, in instructions: a 30-instruction program
    /// is nowhere near the limit, and must not fail for a few more.
    pub margin_min: u64,
    /// No budget may exceed this share of [`VERIFIER_LIMIT`].
    pub limit_percent: u64,
    /// Verified instructions as last measured: series → program → count.
    pub measured: BTreeMap<String, BTreeMap<String, u64>>,
}

const HEADER: &str = "\
# Verified instructions (bpf_prog_info.verified_insns) of every BPF program
# pincg attaches, per guest kernel series, as the verifier-budget scenario
# last measured them. A program fails that scenario when it needs more than
# its count plus margin_percent (and at least margin_min more is allowed);
# no budget may exceed limit_percent of the verifier's 1,000,000-instruction
# limit. Generated: re-measure one series with
#   PINCG_VERIFIER_RECORD=1 PINCG_KERNEL=<series> cargo test -p pincg-tests \\
#       --test guest_scenarios verifier_headroom -- --nocapture
";

impl Budgets {
    /// Parse the budget file's text (`path` only names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Budgets> {
        let at = |offset: usize, key: &str, reason: String| {
            anyhow::anyhow!("{}, line {}: key `{key}`: {reason}", path.display(), line_of(text, offset))
        };
        let doc = DeTable::parse(text).map_err(|e| {
            let line = line_of(text, e.span().map_or(0, |s| s.start));
            anyhow::anyhow!("{}, line {line}: {}", path.display(), e.message().trim())
        })?;
        let count = |key: &str, value: &Spanned<DeValue>| match value.get_ref() {
            DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix())
                .map_err(|_| at(value.span().start, key, format!("{i} is not a count of 0 or more"))),
            other => Err(at(value.span().start, key, format!("expected a whole number, found {}", other.type_str()))),
        };
        let (mut margin, mut margin_min, mut limit) = (None, None, None);
        let mut measured = BTreeMap::new();
        for (key, value) in doc.get_ref().iter() {
            match key.get_ref().as_ref() {
                "margin_percent" => margin = Some(count("margin_percent", value)?),
                "margin_min" => margin_min = Some(count("margin_min", value)?),
                "limit_percent" => match count("limit_percent", value)? {
                    p @ 1..=100 => limit = Some(p),
                    p => return Err(at(value.span().start, "limit_percent", format!("{p} is not 1 to 100"))),
                },
                "series" => {
                    let DeValue::Table(all) = value.get_ref() else {
                        return Err(at(value.span().start, "series", "expected a table per series".into()));
                    };
                    for (series, programs) in all.iter() {
                        let name = format!("series.\"{}\"", series.get_ref());
                        let DeValue::Table(programs) = programs.get_ref() else {
                            return Err(at(programs.span().start, &name, "expected a table of programs".into()));
                        };
                        let counts = programs
                            .iter()
                            .map(|(p, v)| Ok((p.get_ref().to_string(), count(&format!("{name}.{}", p.get_ref()), v)?)))
                            .collect::<Result<_>>()?;
                        measured.insert(series.get_ref().to_string(), counts);
                    }
                }
                other => {
                    let reason = "unknown key (known: margin_percent, margin_min, limit_percent, series)".into();
                    return Err(at(key.span().start, other, reason));
                }
            }
        }
        let missing = |key: &str| anyhow::anyhow!("{}: no `{key}`", path.display());
        let budgets = Budgets {
            margin_percent: margin.ok_or_else(|| missing("margin_percent"))?,
            margin_min: margin_min.ok_or_else(|| missing("margin_min"))?,
            limit_percent: limit.ok_or_else(|| missing("limit_percent"))?,
            measured,
        };
        budgets.check_ceiling().with_context(|| format!("{}", path.display()))?;
        Ok(budgets)
    }

    /// The budget of a program measured at `measured`: the count plus the
    /// margin (rounded up), or plus the least margin if that is more.
    pub fn budget(&self, measured: u64) -> u64 {
        measured + (measured * self.margin_percent).div_ceil(100).max(self.margin_min)
    }

    /// The most any budget may be.
    pub fn ceiling(&self) -> u64 {
        VERIFIER_LIMIT * self.limit_percent / 100
    }

    /// Every budget is under the ceiling: a program whose margin would reach
    /// it is too close to the verifier's limit to be recorded.
    fn check_ceiling(&self) -> Result<()> {
        for (series, programs) in &self.measured {
            for (program, &count) in programs {
                let budget = self.budget(count);
                ensure!(
                    budget <= self.ceiling(),
                    "{program} on {series}: its budget {budget} (recorded {count} plus the margin) is above {}% of \
                     the verifier's {VERIFIER_LIMIT}-instruction limit ({}): make the program simpler",
                    self.limit_percent,
                    self.ceiling()
                );
            }
        }
        Ok(())
    }

    /// The same budgets with `series` measured anew as `loaded`.
    pub fn recorded(&self, series: &str, loaded: &[(String, u64)]) -> Result<Budgets> {
        let mut budgets = self.clone();
        budgets.measured.insert(series.to_string(), loaded.iter().cloned().collect());
        budgets.check_ceiling()?;
        Ok(budgets)
    }

    /// The file's text: the header, the rule, one table per series.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{HEADER}\nmargin_percent = {}\nmargin_min = {}\nlimit_percent = {}\n",
            self.margin_percent, self.margin_min, self.limit_percent
        );
        for (series, programs) in &self.measured {
            out.push_str(&render_series(series, programs));
        }
        out
    }
}

fn render_series(series: &str, programs: &BTreeMap<String, u64>) -> String {
    let mut out = format!("\n[series.\"{series}\"]\n");
    for (program, count) in programs {
        out.push_str(&format!("{program} = {count}\n"));
    }
    out
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// The series of the harness a kernel release belongs to: `iommufd` for
/// build-kernel.sh's kernel, `7` for any 7.x, else `major.minor`.
pub fn series_of(release: &str) -> String {
    if release.contains("-pincg-iommufd") {
        return "iommufd".into();
    }
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    match (parts.next(), parts.next()) {
        (Some("7"), _) => "7".into(),
        (Some(major), Some(minor)) => format!("{major}.{minor}"),
        _ => release.trim().to_string(),
    }
}

/// One loaded program beside its budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub program: String,
    pub verified: u64,
    /// The recorded count and the budget it gives; `None`: not recorded.
    pub budget: Option<(u64, u64)>,
}

impl fmt::Display for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let share = self.verified as f64 * 100.0 / VERIFIER_LIMIT as f64;
        match self.budget {
            Some((measured, budget)) => write!(
                f,
                "{:<28} {:>8} {:>9} {:>9} {:>+9} {:>7.2}%",
                self.program,
                self.verified,
                measured,
                budget,
                budget as i64 - self.verified as i64,
                share
            ),
            None => {
                write!(f, "{:<28} {:>8} {:>9} {:>9} {:>9} {:>7.2}%", self.program, self.verified, "-", "-", "-", share)
            }
        }
    }
}

/// Why a series fails its budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The file has no table for the series.
    NoSeries(String),
    OverBudget {
        program: String,
        verified: u64,
        budget: u64,
    },
    /// A program loaded that the file does not list: a new one needs a budget.
    NoBudget {
        program: String,
        verified: u64,
    },
    /// A program the file lists for this series did not load.
    NotLoaded {
        program: String,
        measured: u64,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NoSeries(series) => write!(f, "{BUDGET_FILE} has no [series.\"{series}\"]"),
            Problem::OverBudget { program, verified, budget } => {
                write!(f, "{program}: {verified} verified instructions, over its budget of {budget}")
            }
            Problem::NoBudget { program, verified } => {
                write!(f, "{program}: {verified} verified instructions and no budget (a new program needs one)")
            }
            Problem::NotLoaded { program, measured } => {
                write!(f, "{program}: recorded at {measured} on this series, but not loaded")
            }
        }
    }
}

/// The loaded programs (name, verified instructions) of `series` against
/// the budgets: one row per program, and what is wrong.
pub fn compare(budgets: &Budgets, series: &str, loaded: &[(String, u64)]) -> (Vec<Row>, Vec<Problem>) {
    let empty = BTreeMap::new();
    let recorded = budgets.measured.get(series).unwrap_or(&empty);
    let mut problems = Vec::new();
    if !budgets.measured.contains_key(series) {
        problems.push(Problem::NoSeries(series.to_string()));
    }
    let mut rows = Vec::new();
    for (program, verified) in loaded {
        let (program, verified) = (program.clone(), *verified);
        let budget = recorded.get(&program).map(|&m| (m, budgets.budget(m)));
        match budget {
            Some((_, b)) if verified > b => {
                problems.push(Problem::OverBudget { program: program.clone(), verified, budget: b })
            }
            Some(_) => {}
            None => problems.push(Problem::NoBudget { program: program.clone(), verified }),
        }
        rows.push(Row { program, verified, budget });
    }
    for (program, &measured) in recorded {
        if !loaded.iter().any(|(p, _)| p == program) {
            problems.push(Problem::NotLoaded { program: program.clone(), measured });
        }
    }
    (rows, problems)
}

/// The hooks `program` serves (any variant).
fn hooks_of(program: &str) -> Vec<&'static str> {
    let mut hooks: Vec<&'static str> = pincg_bpf::hooks::ALL_SOURCES
        .iter()
        .flat_map(|s| s.hooks)
        .filter(|h| h.variants.iter().any(|v| v.programs().any(|p| p == program)))
        .map(|h| h.name)
        .collect();
    hooks.dedup();
    hooks
}

/// `pincg probe --json`'s hooks: name → (state, reason).
fn probe() -> Result<BTreeMap<String, (String, String)>> {
    let json: Value = serde_json::from_str(&pincg(&["probe", "--json"])?).context("parsing pincg probe --json")?;
    let hooks = json["hooks"].as_array().context("pincg probe --json has no hooks")?;
    Ok(hooks
        .iter()
        .map(|h| {
            let field = |k: &str| h[k].as_str().unwrap_or_default().to_string();
            (field("hook"), (field("state"), field("reason")))
        })
        .collect())
}

pub fn run() -> Result<()> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let series = series_of(&release);
    let recording = std::env::var_os(RECORD_ENV).is_some();
    let file = workspace_root().join(BUDGET_FILE);
    let budgets =
        Budgets::parse(&file, &fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?)?;
    println!(
        "   kernel {} (series {series}); budget = recorded + {}% (at least + {}), at most {}% of {VERIFIER_LIMIT} ({})",
        release.trim(),
        budgets.margin_percent,
        budgets.margin_min,
        budgets.limit_percent,
        budgets.ceiling()
    );

    step("load every module a hook waits for, so that every hook this kernel has attaches");
    let mut hooks = probe()?;
    for _ in 0..3 {
        let waiting: BTreeSet<String> =
            hooks.values().filter(|(state, _)| state == "waiting_for_module").map(|(_, m)| m.clone()).collect();
        if waiting.is_empty() {
            break;
        }
        for module in &waiting {
            println!("   modprobe {module}");
            tool("modprobe", &[module])?;
        }
        hooks = probe()?;
    }
    let attachable: Vec<&String> = hooks.iter().filter(|(_, (state, _))| state == "attached").map(|(h, _)| h).collect();
    for (hook, (state, reason)) in hooks.iter().filter(|(_, (state, _))| state != "attached") {
        println!("   not on this kernel: {hook}: {state}: {reason}");
    }
    ensure!(
        hooks.values().all(|(state, _)| state != "waiting_for_module"),
        "hooks still wait for a module after loading them: {hooks:?}"
    );

    step("start the agent: every hook pincg probe calls attachable is attached (pincg_hook_attached 1)");
    let agent = Agent::start()?;
    wait_for(&format!("{} hooks attached", attachable.len()), || {
        let metrics = http_get("/metrics").unwrap_or_default();
        let missing: Vec<&&String> = attachable
            .iter()
            .filter(|h| {
                !metrics
                    .lines()
                    .any(|l| l.starts_with(&format!("pincg_hook_attached{{hook=\"{h}\",")) && l.ends_with(" 1"))
            })
            .collect();
        (missing.is_empty(), format!("not attached: {missing:?}"))
    })
    .with_context(|| "the kernel refused a program pincg probe expects to load (the agent log says why)")?;

    step("verified instructions of every program pincg pinned under /sys/fs/bpf/pincg/links");
    let paths = pincg_bpf::paths::PinPaths::new(pincg_bpf::paths::DEFAULT_PIN_ROOT, CGROUP_ROOT);
    let loaded: Vec<(String, u64)> = pincg_bpf::prog_stats::programs(&paths)?
        .into_iter()
        .map(|p| (p.program, u64::from(p.verified_insns)))
        .collect();
    ensure!(!loaded.is_empty(), "no program is pinned under {}", paths.links_dir().display());
    if let Some((program, _)) = loaded.iter().find(|(_, v)| *v == 0) {
        bail!("{program}: the kernel reports 0 verified instructions (verified_insns needs 5.16 or later)");
    }
    let (rows, problems) = compare(&budgets, &series, &loaded);
    println!(
        "   {:<28} {:>8} {:>9} {:>9} {:>9} {:>8}",
        "program", "verified", "recorded", "budget", "headroom", "of 1M"
    );
    for row in &rows {
        println!("   {row}");
    }
    for problem in &problems {
        if let Problem::NotLoaded { program, .. } = problem {
            for hook in hooks_of(program) {
                let (state, reason) = hooks.get(hook).cloned().unwrap_or_default();
                println!("   {program} serves {hook}: pincg probe says {state} {reason}");
            }
        }
    }
    drop(agent);

    let new = budgets.recorded(&series, &loaded)?;
    if recording {
        let out = Path::new(GUEST_OUT).join(RECORD_FILE);
        fs::write(&out, new.render()).with_context(|| format!("writing {}", out.display()))?;
        println!("   recorded series {series} in {} (the host test copies it to {BUDGET_FILE})", out.display());
        return Ok(());
    }
    if !problems.is_empty() {
        let series_block = render_series(&series, &new.measured[&series]);
        let list: Vec<String> = problems.iter().map(|p| format!("\n  {p}")).collect();
        bail!(
            "verifier budget of series {series}:{}\nre-measure with {RECORD_ENV}=1 (docs/testing.md), or paste into \
             {BUDGET_FILE}:\n{series_block}",
            list.concat()
        );
    }
    println!("   ok {} programs within their budgets on series {series}", rows.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Budgets> {
        Budgets::parse(Path::new(BUDGET_FILE), text)
    }

    fn budgets(programs: &[(&str, u64)]) -> Budgets {
        let counts = programs.iter().map(|(p, c)| (p.to_string(), *c)).collect();
        Budgets {
            margin_percent: 25,
            margin_min: 100,
            limit_percent: 10,
            measured: BTreeMap::from([("6.12".to_string(), counts)]),
        }
    }

    fn loaded(programs: &[(&str, u64)]) -> Vec<(String, u64)> {
        programs.iter().map(|(p, c)| (p.to_string(), *c)).collect()
    }

    #[test]
    fn the_checked_in_file_parses_and_is_as_rendered() {
        let file = workspace_root().join(BUDGET_FILE);
        let text = fs::read_to_string(&file).unwrap();
        let budgets = parse(&text).unwrap();
        assert_eq!(budgets.render(), text, "{BUDGET_FILE} is generated: record it, do not edit it by hand");
        for series in ["6.1", "6.12", "7"] {
            assert!(budgets.measured.get(series).is_some_and(|p| !p.is_empty()), "no programs for {series}");
        }
    }

    #[test]
    fn the_margin_rounds_up_and_the_ceiling_is_a_share_of_the_limit() {
        let b = budgets(&[]);
        assert_eq!(b.budget(1000), 1250);
        assert_eq!(b.budget(1001), 1252, "1251.25 rounds up");
        assert_eq!(b.budget(400), 500, "25% is the least margin too");
        assert_eq!(b.budget(399), 499, "the least margin, 100");
        assert_eq!(b.budget(27), 127);
        assert_eq!(b.budget(0), 100);
        assert_eq!(b.ceiling(), 100_000);
    }

    #[test]
    fn a_program_within_its_budget_passes_and_one_past_it_fails() {
        let b = budgets(&[("enforce_file_ioctl", 1000)]);
        let (rows, problems) = compare(&b, "6.12", &loaded(&[("enforce_file_ioctl", 1250)]));
        assert_eq!(problems, []);
        assert_eq!(rows, [Row { program: "enforce_file_ioctl".into(), verified: 1250, budget: Some((1000, 1250)) }]);
        let (_, problems) = compare(&b, "6.12", &loaded(&[("enforce_file_ioctl", 1251)]));
        let over = Problem::OverBudget { program: "enforce_file_ioctl".into(), verified: 1251, budget: 1250 };
        assert_eq!(problems, std::slice::from_ref(&over));
        assert_eq!(over.to_string(), "enforce_file_ioctl: 1251 verified instructions, over its budget of 1250");
    }

    #[test]
    fn a_new_program_and_a_missing_one_both_fail() {
        let b = budgets(&[("xdp_umem_create_v61", 500)]);
        let (rows, problems) = compare(&b, "6.12", &loaded(&[("xdp_new", 40)]));
        assert_eq!(rows[0].budget, None);
        assert_eq!(
            problems,
            [
                Problem::NoBudget { program: "xdp_new".into(), verified: 40 },
                Problem::NotLoaded { program: "xdp_umem_create_v61".into(), measured: 500 },
            ]
        );
    }

    #[test]
    fn a_series_without_a_table_fails_for_every_program() {
        let (_, problems) = compare(&budgets(&[]), "iommufd", &loaded(&[("iommufd_update", 90)]));
        assert_eq!(
            problems,
            [Problem::NoSeries("iommufd".into()), Problem::NoBudget { program: "iommufd_update".into(), verified: 90 }]
        );
    }

    #[test]
    fn a_budget_past_the_ceiling_is_refused_when_read_and_when_recorded() {
        // 80,001 + 25% = 100,002 > 10% of 1M.
        let b = budgets(&[]);
        let err = b.recorded("7", &loaded(&[("io_uring_registered_v613", 80_001)])).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "io_uring_registered_v613 on 7: its budget 100002 (recorded 80001 plus the margin) is above 10%"
            ),
            "{err}"
        );
        assert!(b.recorded("7", &loaded(&[("io_uring_registered_v613", 80_000)])).is_ok());
        let text = "margin_percent = 25\nmargin_min = 100\nlimit_percent = 10\n[series.\"7\"]\nbig = 80001\n";
        let err = format!("{:#}", parse(text).unwrap_err());
        assert!(err.contains("big on 7: its budget 100002"), "{err}");
    }

    #[test]
    fn recording_replaces_one_series_and_keeps_the_others() {
        let b = budgets(&[("old", 10)]);
        let new = b.recorded("7", &loaded(&[("a", 1), ("b", 2)])).unwrap();
        assert_eq!(new.measured["6.12"], BTreeMap::from([("old".to_string(), 10)]));
        let again = new.recorded("6.12", &loaded(&[("c", 3)])).unwrap();
        assert_eq!(again.measured["6.12"], BTreeMap::from([("c".to_string(), 3)]));
        assert_eq!(parse(&again.render()).unwrap(), again, "what is recorded reads back");
        assert!(again.render().ends_with("\n[series.\"6.12\"]\nc = 3\n\n[series.\"7\"]\na = 1\nb = 2\n"));
    }

    #[test]
    fn bad_files_name_the_line_and_key() {
        let err = |text: &str| format!("{:#}", parse(text).unwrap_err());
        assert_eq!(
            err("margin_percent = 25\nmargin_min = 100\nlimit_percent = 10\n[series.\"6.1\"]\nxdp = \"many\"\n"),
            "tests/verifier-budget.toml, line 5: key `series.\"6.1\".xdp`: expected a whole number, found string"
        );
        assert_eq!(
            err("margin_percent = 25\nmargin_min = 100\nlimit_percent = 0\n"),
            "tests/verifier-budget.toml, line 3: key `limit_percent`: 0 is not 1 to 100"
        );
        assert_eq!(
            err("margin = 25\n"),
            "tests/verifier-budget.toml, line 1: key `margin`: unknown key (known: margin_percent, margin_min, limit_percent, series)"
        );
        assert_eq!(err("limit_percent = 10\n"), "tests/verifier-budget.toml: no `margin_percent`");
        assert!(err("margin_percent = \n").starts_with("tests/verifier-budget.toml, line 1: "));
    }

    #[test]
    fn series_follow_the_harness() {
        assert_eq!(series_of("6.1.0-50-amd64\n"), "6.1");
        assert_eq!(series_of("6.12.117+deb13-amd64"), "6.12");
        assert_eq!(series_of("7.2.13+deb14-amd64"), "7");
        assert_eq!(series_of("6.12.57-pincg-iommufd-1a2b3c4d"), "iommufd");
    }

    #[test]
    fn programs_map_to_the_hooks_they_serve() {
        assert_eq!(hooks_of("enforce_file_ioctl"), ["vfio:refuse", "iommufd:refuse", "rdma:refuse", "vduse:refuse"]);
        assert_eq!(hooks_of("vduse_deregistered"), ["vduse:release"]);
        assert_eq!(hooks_of("no_such_program"), Vec::<&str>::new());
    }
}
