//! Prometheus end to end: a libvirt VM scope and a Kubernetes pod container
//! pin io_uring buffers; `promtool check metrics` accepts the agent's real
//! output; a real Prometheus server scrapes the agent, stores the exact
//! bytes (with systemd's `\x2d` escapes intact in the cgroup label), and
//! evaluates every PromQL expression of the Grafana dashboard and every
//! alert rule of deploy/prometheus/pincg-rules.yaml without an error.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::guest::workspace_root;
use crate::scenario::{
    http_get, http_get_from, step, url_encode, wait_for_within, Agent, Cgroup, Workload, METRICS_ADDR,
};

const MIB: u64 = 1 << 20;

/// A libvirt/QEMU VM as systemd-machined names it: `-` in the machine name
/// is escaped as `\x2d` (a literal backslash) in the unit name.
const VM_CGROUP: &str = r"machine.slice/machine-qemu\x2d1\x2dvm1.scope";
const POD_UID: &str = "6f1c2b9a-3d4e-4f5a-8b6c-7d8e9f0a1b2c";
const CONTAINER_ID: &str = "4d9a8c3e2b1f0a6d5c4b3a2918f7e6d5c4b3a2918f7e6d5c4b3a2918f7e6d5c4";

const PROMETHEUS_ADDR: &str = "127.0.0.1:9090";
const PROMETHEUS_DIR: &str = "/tmp/pincg-prometheus";
/// Prometheus under TCG: a 50 MB Go binary read over 9p, then the TSDB.
const PROMETHEUS_START: Duration = Duration::from_secs(60);
const PROMETHEUS_SETTLE: Duration = Duration::from_secs(30);

/// Grafana's built-in interval variables and what stands for them (as in
/// deploy/grafana/check_dashboard.py).
const GRAFANA_BUILTINS: &[(&str, &str)] = &[("__rate_interval", "5m"), ("__interval", "1m"), ("__range", "1h")];

pub fn run() -> Result<()> {
    let pod_cgroup = format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CONTAINER_ID}.scope",
        POD_UID.replace('-', "_")
    );
    let vm = Cgroup::create(VM_CGROUP)?;
    let pod = Cgroup::create(&pod_cgroup)?;
    let vm_label = format!("/{VM_CGROUP}");
    let pod_label = format!("/{pod_cgroup}");
    let _agent = Agent::start()?;

    step("the VM (machine-qemu\\x2d1\\x2dvm1.scope) registers a 64 MiB io_uring buffer, the pod's container 32 MiB");
    let mut qemu = Workload::spawn("vm1", &vm, &["io_uring"])?;
    qemu.run("ring")?;
    qemu.run("register 64M")?;
    let mut container = Workload::spawn("pod-container", &pod, &["io_uring"])?;
    container.run("ring")?;
    container.run("register 32M")?;
    vm.expect_current(64 * MIB)?;
    pod.expect_current(32 * MIB)?;

    step("promtool check metrics < (curl http://127.0.0.1:9578/metrics)");
    let metrics = http_get("/metrics")?;
    for line in metrics.lines() {
        if line.starts_with("pincg_pinned_bytes{") && line.contains("io_uring") && !line.ends_with(" 0") {
            println!("   {line}");
        }
    }
    promtool_check_metrics(&metrics)?;

    step("promtool check config: scrape job pincg every 1 s, rules from deploy/prometheus/pincg-rules.yaml");
    let rules_file = workspace_root().join("deploy/prometheus/pincg-rules.yaml");
    ensure!(rules_file.exists(), "{} is missing", rules_file.display());
    let _ = fs::remove_dir_all(PROMETHEUS_DIR);
    fs::create_dir_all(PROMETHEUS_DIR)?;
    let config = Path::new(PROMETHEUS_DIR).join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: pincg\n    static_configs:\n      - targets: ['{METRICS_ADDR}']\n",
            rules_file.display()
        ),
    )?;
    print!("{}", fs::read_to_string(&config)?);
    let out = Command::new("promtool").arg("check").arg("config").arg(&config).output().context("running promtool")?;
    print_indented(&out.stdout);
    print_indented(&out.stderr);
    ensure!(out.status.success(), "promtool check config failed ({})", out.status);

    step("start Prometheus on 127.0.0.1:9090");
    let mut prometheus = Prometheus::start(&config)?;
    let result = with_prometheus(&mut prometheus, &vm_label, &pod_label);
    if result.is_err() {
        let _ = print_scrape_health();
        println!("--- prometheus log ---\n{}", prometheus.log_text());
    }
    result?;
    drop(prometheus);
    drop(qemu);
    drop(container);
    Ok(())
}

fn with_prometheus(prometheus: &mut Prometheus, vm_label: &str, pod_label: &str) -> Result<()> {
    let started = Instant::now();
    loop {
        if let Some(status) = prometheus.child.try_wait()? {
            bail!("prometheus exited with {status} before it was ready");
        }
        match http_get_from(PROMETHEUS_ADDR, "/-/ready") {
            Ok((200, _)) => break,
            Ok(_) | Err(_) if started.elapsed() < PROMETHEUS_START => std::thread::sleep(Duration::from_millis(100)),
            other => bail!("prometheus not ready after {PROMETHEUS_START:?}: {other:?}"),
        }
    }
    println!("   ok Prometheus answers /-/ready (after {} ms)", started.elapsed().as_millis());
    let ready = started.elapsed();
    // The first scrape comes about 5 s after ready: Prometheus hands
    // discovered targets to the scrape manager at most every 5 s.
    wait_for_within("target 127.0.0.1:9578 of job pincg is up", PROMETHEUS_SETTLE, || {
        match api("/api/v1/targets?state=active") {
            Ok(data) => {
                let targets = data["activeTargets"].as_array().cloned().unwrap_or_default();
                let pincg = targets.iter().find(|t| t["labels"]["job"] == "pincg");
                let seen = pincg
                    .map_or("no pincg target".to_string(), |t| format!("health {} {}", t["health"], t["lastError"]));
                (pincg.is_some_and(|t| t["health"] == "up"), seen)
            }
            Err(e) => (false, e.to_string()),
        }
    })?;
    // Every query below is evaluated at the time of one successful scrape
    // (T), with 3 successful scrapes up to it, so that rate() and increase()
    // have samples and a later scrape that times out under TCG (its
    // staleness markers hide every series until the next good one) changes
    // nothing.
    let mut at = String::new();
    wait_for_within("a successful scrape T with 3 successful scrapes up to it", PROMETHEUS_SETTLE, || {
        let latest = query(r#"timestamp(up{job="pincg"} == 1)"#, None);
        let Ok(Some(t)) = latest.as_ref().map(|d| d["result"][0]["value"][1].as_str().map(str::to_string)) else {
            return (false, format!("the latest scrape failed: {latest:?}"));
        };
        match query(r#"sum_over_time(up{job="pincg"}[1m])"#, Some(&t)) {
            Ok(data) => {
                let n = first_value(&data).unwrap_or(0.0);
                at = t;
                (n >= 3.0, format!("{n} successful scrapes"))
            }
            Err(e) => (false, e.to_string()),
        }
    })?;
    println!(
        "   Prometheus ready {} ms after start, 3 scrapes stored after {} ms; queries at T = {at}",
        ready.as_millis(),
        started.elapsed().as_millis(),
    );
    let at = Some(at.as_str());

    step("the API has the exact bytes of the VM and of the pod's container");
    expect_one_series(r#"pincg_pinned_bytes{cgroup=~".*vm1.*",source="io_uring"}"#, at, vm_label, 64 * MIB)?;
    expect_one_series(
        r#"pincg_pinned_bytes{cgroup=~".*cri-containerd-.*",source="io_uring"}"#,
        at,
        pod_label,
        32 * MIB,
    )?;
    expect_one_series(r#"pincg_current_bytes{cgroup=~".*vm1.*"}"#, at, vm_label, 64 * MIB)?;

    step("every PromQL expression of deploy/grafana/pincg-dashboard.json, $instance and $cgroup = All (.*)");
    let dashboard_file = workspace_root().join("deploy/grafana/pincg-dashboard.json");
    let dashboard: Value = serde_json::from_str(&fs::read_to_string(&dashboard_file)?)
        .with_context(|| format!("parsing {}", dashboard_file.display()))?;
    let exprs = dashboard_exprs(&dashboard);
    ensure!(!exprs.is_empty(), "{} has no PromQL expressions", dashboard_file.display());
    for (where_, expr) in &exprs {
        let promql = grafana_substitute(expr, &[]);
        let data = query(&promql, at).with_context(|| format!("dashboard {where_}"))?;
        println!("   {:>3} series  {where_}: {promql}", series(&data).len());
    }

    step("the same with the VM selected: $instance = 127.0.0.1:9578, $cgroup = its cgroup (Grafana's regex escaping)");
    let instance = grafana_regex_escape(METRICS_ADDR);
    let cgroup = grafana_regex_escape(vm_label);
    println!("   $instance -> {instance}\n   $cgroup -> {cgroup}");
    let mut vm_series = 0;
    for (where_, expr) in &exprs {
        let promql = grafana_substitute(expr, &[("instance", &instance), ("cgroup", &cgroup)]);
        let data = query(&promql, at).with_context(|| format!("dashboard {where_}"))?;
        let found = series(&data);
        let selects_cgroup = expr.contains("$cgroup") || expr.contains("${cgroup}");
        for s in found.iter().filter(|_| selects_cgroup) {
            if let Some(label) = s["metric"]["cgroup"].as_str() {
                ensure!(
                    label == vm_label,
                    "dashboard {where_} with the VM selected returned cgroup {label:?}: {promql}"
                );
                vm_series += 1;
            }
        }
        println!("   {:>3} series  {where_}: {promql}", found.len());
    }
    ensure!(vm_series > 0, "no dashboard expression using $cgroup found the VM's cgroup once selected");
    println!("   ok the expressions using $cgroup returned {vm_series} series of the VM's cgroup, none of another");

    step("every alert rule Prometheus loaded from pincg-rules.yaml: evaluated without error, then queried");
    let mut rules = Vec::new();
    wait_for_within("every rule evaluated with health ok, AgentDown inactive", PROMETHEUS_SETTLE, || {
        match api("/api/v1/rules") {
            Ok(data) => {
                rules = data["groups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                    .collect();
                let bad: Vec<String> = rules
                    .iter()
                    .filter(|r| r["health"] != "ok" || (r["name"] == "AgentDown" && r["state"] != "inactive"))
                    .map(|r| format!("{} health {} state {} {}", r["name"], r["health"], r["state"], r["lastError"]))
                    .collect();
                (!rules.is_empty() && bad.is_empty(), format!("{} rules, {bad:?}", rules.len()))
            }
            Err(e) => (false, e.to_string()),
        }
    })?;
    let alerts = rules.iter().filter(|r| r["type"] == "alerting").count();
    ensure!(alerts >= 6, "expected the 6 alerts of pincg-rules.yaml, Prometheus loaded {alerts}");
    for rule in &rules {
        let name = rule["name"].as_str().unwrap_or("?");
        let expr = rule["query"].as_str().context("a rule without a query")?;
        let data = query(expr, at).with_context(|| format!("alert {name}"))?;
        println!(
            "   {:>3} series  alert {name} ({}): {expr}",
            series(&data).len(),
            rule["state"].as_str().unwrap_or("?")
        );
    }

    step("scrape health");
    print_scrape_health()
}

/// How the scrapes of the agent went, over the whole run.
fn print_scrape_health() -> Result<()> {
    for expr in [
        r#"count_over_time(up{job="pincg"}[10m])"#,
        r#"count_over_time(up{job="pincg"}[10m]) - sum_over_time(up{job="pincg"}[10m])"#,
        r#"quantile_over_time(0.5, scrape_duration_seconds{job="pincg"}[10m])"#,
        r#"max_over_time(scrape_duration_seconds{job="pincg"}[10m])"#,
        r#"scrape_samples_scraped{job="pincg"}"#,
    ] {
        let data = query(expr, None)?;
        println!("   {expr} = {}", first_value(&data).map_or("none".to_string(), |v| v.to_string()));
    }
    Ok(())
}

/// `promtool check metrics` on `metrics` (stdin): no output, exit 0.
fn promtool_check_metrics(metrics: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (Debian package prometheus)")?;
    child.stdin.take().expect("piped").write_all(metrics.as_bytes())?;
    let out = child.wait_with_output()?;
    print_indented(&out.stdout);
    print_indented(&out.stderr);
    ensure!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics found problems ({}): exit 3 is a lint finding, 1 a parse error",
        out.status
    );
    println!("   ok promtool check metrics: {} lines, no findings", metrics.lines().count());
    Ok(())
}

fn print_indented(bytes: &[u8]) {
    for line in String::from_utf8_lossy(bytes).lines() {
        println!("   | {line}");
    }
}

/// The Prometheus server; killed when dropped.
struct Prometheus {
    child: Child,
    log: PathBuf,
}

impl Prometheus {
    fn start(config: &Path) -> Result<Prometheus> {
        let log = Path::new(PROMETHEUS_DIR).join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={PROMETHEUS_DIR}/data"))
            .arg(format!("--web.listen-address={PROMETHEUS_ADDR}"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()
            .context("starting prometheus (Debian package prometheus)")?;
        println!("   prometheus pid {}, log {}", child.id(), log.display());
        Ok(Prometheus { child, log })
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET a Prometheus API path; its `data` if the status is success and
/// there are no warnings.
fn api(path: &str) -> Result<Value> {
    let (status, body) = http_get_from(PROMETHEUS_ADDR, path)?;
    let v: Value = serde_json::from_str(&body).with_context(|| format!("GET {path}: HTTP {status}: {body}"))?;
    ensure!(status == 200 && v["status"] == "success", "GET {path}: HTTP {status}: {body}");
    if let Some(warnings) = v.get("warnings") {
        bail!("GET {path}: warnings {warnings}");
    }
    Ok(v["data"].clone())
}

/// An instant query's `data`, now or at time `at` (Unix seconds).
fn query(expr: &str, at: Option<&str>) -> Result<Value> {
    let time = at.map_or(String::new(), |t| format!("&time={t}"));
    api(&format!("/api/v1/query?query={}{time}", url_encode(expr))).with_context(|| format!("query {expr}"))
}

/// The series (or the one scalar) of a query result.
fn series(data: &Value) -> Vec<Value> {
    match data["resultType"].as_str() {
        Some("vector" | "matrix") => data["result"].as_array().cloned().unwrap_or_default(),
        _ => vec![data["result"].clone()],
    }
}

/// The value of the first sample of an instant vector.
fn first_value(data: &Value) -> Option<f64> {
    data["result"].get(0)?["value"].get(1)?.as_str()?.parse().ok()
}

/// `expr` (at `at`) returns exactly one series, labelled `cgroup`, of value `bytes`.
fn expect_one_series(expr: &str, at: Option<&str>, cgroup: &str, bytes: u64) -> Result<()> {
    let data = query(expr, at)?;
    let found = series(&data);
    ensure!(found.len() == 1, "{expr}: expected one series, got {}", data["result"]);
    let label = found[0]["metric"]["cgroup"].as_str().unwrap_or_default();
    let value = found[0]["value"][1].as_str().unwrap_or_default();
    ensure!(label == cgroup, "{expr}: cgroup label {label:?}, expected {cgroup:?}");
    ensure!(value == bytes.to_string(), "{expr}: value {value}, expected {bytes}");
    println!("   ok {expr} = {value} (cgroup=\"{label}\")");
    Ok(())
}

/// Every PromQL expression of a dashboard, with where it is: each `expr`
/// field (panel targets, at any depth), and each query variable's query
/// (the inner selector of `label_values(SELECTOR, label)`).
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    for var in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] != "query" {
            continue;
        }
        let q = var["query"]["query"].as_str().or(var["query"].as_str()).unwrap_or_default();
        let inner = q
            .trim()
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .and_then(|args| args.rsplit_once(','))
            .map_or(q, |(selector, _label)| selector);
        exprs.push((format!("variable {}", var["name"].as_str().unwrap_or("?")), inner.to_string()));
    }
    collect_exprs(dashboard, "", &mut exprs);
    exprs
}

fn collect_exprs(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            let title = map.get("title").and_then(Value::as_str).unwrap_or(title);
            if let Some(expr) = map.get("expr").and_then(Value::as_str) {
                let ref_id = map.get("refId").and_then(Value::as_str).unwrap_or("?");
                out.push((format!("panel {title:?} {ref_id}"), expr.to_string()));
            }
            for child in map.values() {
                collect_exprs(child, title, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_exprs(i, title, out)),
        _ => {}
    }
}

/// Replace Grafana's variables in `expr`: the interval built-ins by fixed
/// durations, a variable in `values` by its value, any other (used inside
/// regex matchers) by `.*`, the dashboard's "All" value.
fn grafana_substitute(expr: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (braced, body) = match after.strip_prefix('{') {
            Some(b) => (true, b),
            None => (false, after),
        };
        let len = body
            .char_indices()
            .find(|&(i, c)| !(c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
            .map_or(body.len(), |(i, _)| i);
        let name = &body[..len];
        let closed = !braced || body[len..].starts_with('}');
        if name.is_empty() || !closed {
            out.push('$');
            rest = after;
            continue;
        }
        let value = GRAFANA_BUILTINS.iter().chain(values.iter()).find(|(n, _)| *n == name).map_or(".*", |(_, v)| *v);
        out.push_str(value);
        rest = &body[len + usize::from(braced)..];
    }
    out.push_str(rest);
    out
}

/// What Grafana's Prometheus data source puts in a query for one selected
/// value of a multi-value variable (prometheusSpecialRegexEscape): regex
/// metacharacters escaped, and every backslash doubled twice (once for the
/// regex, once for the PromQL string).
fn grafana_regex_escape(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        match c {
            '\\' => out.push_str(r"\\\\"),
            '$' | '^' | '*' | '{' | '}' | '[' | ']' | '\'' | '+' | '?' | '.' | '(' | ')' | '|' => {
                out.push_str(r"\\");
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_like_check_dashboard_py() {
        assert_eq!(
            grafana_substitute(r#"rate(x{i=~"$instance", c=~"${cgroup}"}[$__rate_interval])"#, &[]),
            r#"rate(x{i=~".*", c=~".*"}[5m])"#
        );
        assert_eq!(grafana_substitute("a{c=~\"$cgroup\"} $ 1", &[("cgroup", "v")]), "a{c=~\"v\"} $ 1");
    }

    #[test]
    fn escapes_like_grafana() {
        assert_eq!(
            grafana_regex_escape(r"/machine.slice/machine-qemu\x2d1.scope"),
            r"/machine\\.slice/machine-qemu\\\\x2d1\\.scope"
        );
    }

    #[test]
    fn finds_the_dashboards_expressions() {
        let dashboard: Value = serde_json::json!({
            "templating": {"list": [{"name": "cgroup", "type": "query",
                "query": {"query": "label_values(pincg_current_bytes{instance=~\"$instance\"}, cgroup)"}}]},
            "panels": [{"title": "row", "panels": [{"title": "p", "targets": [{"refId": "A", "expr": "up"}]}]}]
        });
        assert_eq!(
            dashboard_exprs(&dashboard),
            vec![
                ("variable cgroup".to_string(), "pincg_current_bytes{instance=~\"$instance\"}".to_string()),
                ("panel \"p\" A".to_string(), "up".to_string()),
            ]
        );
    }
}
