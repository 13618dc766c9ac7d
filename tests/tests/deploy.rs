//! deploy/: the Kubernetes manifests, systemd unit, Prometheus rules, Grafana
//! dashboard and Containerfile.
//!
//! `deploy/validate.sh` does the tool-based checks (rendering, schema
//! validation, systemd-analyze, promtool); these tests run it once and add
//! the invariants that need reading the objects: security settings, the
//! agent's flags, the Service/ServiceMonitor wiring, and that the dashboard
//! and alerts query only metrics the agent exports (or will, per the docs).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use pincg_cgroup_spec::config::{Config, DEFAULT_PATH};
use pincg_tests::guest::{record_skip, workspace_binary, workspace_root};
use serde_json::Value;

/// Metrics `pincg agent` exports today (agent/src/metrics.rs).
const EXPORTED: &[&str] = &[
    "pincg_pinned_bytes",
    "pincg_current_bytes",
    "pincg_hook_attached",
    "pincg_source_enforcement",
    "pincg_ledger_objects",
    "pincg_ledger_capacity",
    "pincg_ledger_events_total",
    "pincg_build_info",
];
/// Documented as coming with pins.max / pins.peak / pins.events.
const UPCOMING: &[&str] = &["pincg_limit_bytes", "pincg_peak_bytes", "pincg_events_total"];
/// Prometheus' own per-target series.
const PROMETHEUS: &[&str] = &["up"];

const CAPABILITIES: &[&str] = &["BPF", "PERFMON", "SYS_ADMIN", "SYS_RESOURCE", "CHOWN", "DAC_READ_SEARCH"];

struct Validation {
    success: bool,
    output: String,
}

/// Run deploy/validate.sh once per test process; it also writes the
/// rendered objects to target/deploy/<kustomization>/objects.json.
fn validation() -> &'static Validation {
    static ONCE: OnceLock<Validation> = OnceLock::new();
    ONCE.get_or_init(|| {
        let out = Command::new("bash")
            .arg(workspace_root().join("deploy/validate.sh"))
            .current_dir(workspace_root())
            .output()
            .expect("bash runs deploy/validate.sh");
        Validation {
            success: out.status.success(),
            output: format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout)),
        }
    })
}

fn rendered(kustomization: &str) -> Vec<Value> {
    let _ = validation();
    let path = workspace_root().join("target/deploy").join(kustomization).join("objects.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} (written by deploy/validate.sh): {e}", path.display()));
    serde_json::from_str::<Vec<Value>>(&text).expect("objects.json is a JSON list")
}

fn object<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<_> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

fn read(rel: &str) -> String {
    let path: PathBuf = workspace_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn validate_sh_passes() {
    let v = validation();
    println!("{}", v.output);
    assert!(v.success, "deploy/validate.sh failed:\n{}", v.output);
    assert!(!v.output.contains("FAILED"), "{}", v.output);
    // Its skips (CRD kinds without a schema) go into the suite's summary.
    for line in v.output.lines().filter_map(|l| l.strip_prefix("SKIPPED ")) {
        let (what, why) = line.trim().rsplit_once(": ").unwrap_or((line.trim(), "no reason given"));
        record_skip("deploy/validate.sh", what, why);
    }
}

#[test]
fn daemonset_is_unprivileged_with_commented_capabilities() {
    for kustomization in ["base", "privileged", "servicemonitor"] {
        let objects = rendered(kustomization);
        let ds = object(&objects, "DaemonSet");
        let pod = &ds["spec"]["template"]["spec"];
        let ctx = |what: &str| format!("{kustomization}: {what}");
        for host in ["hostNetwork", "hostPID", "hostIPC"] {
            assert!(matches!(pod[host], Value::Null | Value::Bool(false)), "{}", ctx(host));
        }
        assert_eq!(pod["priorityClassName"], "system-node-critical", "{}", ctx("priorityClassName"));
        assert_eq!(pod["automountServiceAccountToken"], false, "{}", ctx("service account token"));
        let tolerates_all = pod["tolerations"].as_array().is_some_and(|t| {
            t.iter().any(|t| t["operator"] == "Exists" && t.get("key").is_none() && t.get("effect").is_none())
        });
        assert!(tolerates_all, "{}", ctx("a toleration for every taint"));

        let containers = pod["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "{}", ctx("one container"));
        let c = &containers[0];
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", ctx("readOnlyRootFilesystem"));
        for (kind, res) in [("requests", "cpu"), ("requests", "memory"), ("limits", "cpu"), ("limits", "memory")] {
            assert!(c["resources"][kind][res].is_string(), "{}", ctx(&format!("resources.{kind}.{res}")));
        }
        if kustomization == "privileged" {
            assert_eq!(sc["privileged"], true, "{}", ctx("privileged"));
        } else {
            assert_eq!(sc["privileged"], false, "{}", ctx("privileged"));
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", ctx("allowPrivilegeEscalation"));
            assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{}", ctx("capabilities.drop"));
            assert_eq!(strings(&sc["capabilities"]["add"]), CAPABILITIES, "{}", ctx("capabilities.add"));
        }

        // Probes, port, env.
        let ports = c["ports"].as_array().expect("ports");
        assert!(ports.iter().any(|p| p["name"] == "metrics" && p["containerPort"] == 9578), "{}", ctx("port"));
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(c[probe]["httpGet"]["path"], "/healthz", "{}", ctx(probe));
            assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{}", ctx(probe));
        }
        let node_name = c["env"].as_array().and_then(|e| e.iter().find(|e| e["name"] == "NODE_NAME"));
        assert_eq!(
            node_name.map(|e| &e["valueFrom"]["fieldRef"]["fieldPath"]),
            Some(&Value::from("spec.nodeName")),
            "{}",
            ctx("NODE_NAME")
        );

        // Host paths: where, how, read-only or not.
        let volumes = pod["volumes"].as_array().expect("volumes");
        let mounts = c["volumeMounts"].as_array().expect("volumeMounts");
        for (host, read_only, kind) in [
            ("/sys/fs/bpf", false, "Directory"),
            ("/sys/fs/cgroup", true, "Directory"),
            ("/sys/kernel/btf", true, "Directory"),
            ("/sys/kernel/security", true, "Directory"),
            ("/run/pincg", false, "DirectoryOrCreate"),
            ("/var/run/nri", false, "DirectoryOrCreate"),
        ] {
            let vol = volumes
                .iter()
                .find(|v| v["hostPath"]["path"] == host)
                .unwrap_or_else(|| panic!("{}", ctx(&format!("no hostPath volume for {host}"))));
            assert_eq!(vol["hostPath"]["type"], kind, "{}", ctx(host));
            let mount = mounts
                .iter()
                .find(|m| m["name"] == vol["name"])
                .unwrap_or_else(|| panic!("{}", ctx(&format!("{host} is not mounted"))));
            assert_eq!(mount["readOnly"].as_bool().unwrap_or(false), read_only, "{}", ctx(&format!("{host} readOnly")));
        }
        let host_paths: Vec<_> = volumes.iter().filter_map(|v| v["hostPath"]["path"].as_str()).collect();
        assert_eq!(host_paths.len(), 6, "{}: unexpected host paths {host_paths:?}", kustomization);
    }
}

/// Every added capability has a comment line right above it saying why.
#[test]
fn each_capability_has_a_comment() {
    let text = read("deploy/kubernetes/base/daemonset.yaml");
    let lines: Vec<&str> = text.lines().collect();
    let add = lines
        .iter()
        .position(|l| l.trim() == "add:")
        .expect("capabilities.add in deploy/kubernetes/base/daemonset.yaml");
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate().skip(add + 1) {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if indent(line) <= indent(lines[add]) && !t.starts_with("- ") {
            break;
        }
        let Some(cap) = t.strip_prefix("- ") else { break };
        let above = lines[i - 1].trim();
        assert!(above.starts_with('#') && above.len() > 2, "capability {cap} has no comment line right above it");
        found.push(cap.trim().to_string());
    }
    assert_eq!(found, CAPABILITIES, "capabilities.add as read from the raw YAML");
}

/// The agent accepts the DaemonSet's command line, and the image has the
/// binary where the DaemonSet runs it.
#[test]
fn agent_accepts_the_daemonset_args() {
    let objects = rendered("base");
    let c = &object(&objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][0];
    let command = strings(&c["command"]);
    let args = strings(&c["args"]);
    assert_eq!(command, ["/usr/local/bin/pincg"]);
    assert!(args.contains(&"--listen=0.0.0.0:9578"), "a pod must listen on its pod IP: {args:?}");
    let containerfile = read("deploy/container/Containerfile");
    assert!(containerfile.contains("COPY --from=build /out/pincg /usr/local/bin/pincg"), "image path");
    assert!(containerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/pincg"]"#), "image entrypoint");

    // clap validates every flag and value before it handles --help.
    let pincg = workspace_binary("pincg", env!("CARGO_BIN_EXE_pincg-scenario"));
    let out = Command::new(&pincg).args(&args).arg("--help").output().expect("pincg runs");
    assert!(out.status.success(), "pincg {} --help: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    let unit = read("deploy/systemd/pincg.service");
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=/usr/local/bin/pincg ")).expect("ExecStart");
    let out = Command::new(&pincg).args(exec.split_whitespace()).arg("--help").output().expect("pincg runs");
    assert!(out.status.success(), "systemd unit: pincg {exec} --help: {}", String::from_utf8_lossy(&out.stderr));
}

/// The ConfigMap holds the agent's configuration file where the agent looks
/// for it, and the agent takes it: the built-in defaults, written out.
#[test]
fn configmap_holds_a_config_the_agent_takes() {
    let objects = rendered("base");
    let text = object(&objects, "ConfigMap")["data"]["config.toml"].as_str().expect("config.toml in the ConfigMap");
    let config = Config::parse(Path::new("configmap.yaml: config.toml"), text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config, Config::default());
    let pod = &object(&objects, "DaemonSet")["spec"]["template"]["spec"];
    let mount =
        pod["containers"][0]["volumeMounts"].as_array().expect("volumeMounts").iter().find(|m| m["name"] == "config");
    let dir = Path::new(DEFAULT_PATH).parent().expect("a directory").to_str().expect("UTF-8");
    assert_eq!(mount.map(|m| &m["mountPath"]), Some(&Value::from(dir)), "the ConfigMap is mounted at {dir}");
    let volume = pod["volumes"].as_array().expect("volumes").iter().find(|v| v["name"] == "config");
    assert_eq!(volume.map(|v| &v["configMap"]["name"]), Some(&Value::from("pincg-config")));
}

#[test]
fn service_and_servicemonitor_reach_the_agent() {
    let objects = rendered("servicemonitor");
    let ds = object(&objects, "DaemonSet");
    let svc = object(&objects, "Service");
    let sm = object(&objects, "ServiceMonitor");
    let ns = ds["metadata"]["namespace"].as_str().expect("namespace");
    for o in &objects {
        if o["kind"] != "Namespace" {
            assert_eq!(o["metadata"]["namespace"], ns, "{} {}", o["kind"], o["metadata"]["name"]);
        }
    }
    assert_eq!(object(&objects, "Namespace")["metadata"]["name"], ns);
    assert_eq!(
        ds["spec"]["template"]["spec"]["serviceAccountName"],
        object(&objects, "ServiceAccount")["metadata"]["name"]
    );

    let labels_match = |selector: &Value, labels: &Value| {
        selector.as_object().is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
    };
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    assert!(labels_match(&ds["spec"]["selector"]["matchLabels"], pod_labels), "DaemonSet selector");
    assert!(labels_match(&svc["spec"]["selector"], pod_labels), "Service selector");
    assert_eq!(svc["spec"]["clusterIP"], "None", "headless Service");
    let port = &svc["spec"]["ports"][0];
    assert_eq!(port["targetPort"], "metrics");
    assert_eq!(port["port"], 9578);

    assert!(
        labels_match(&sm["spec"]["selector"]["matchLabels"], &svc["metadata"]["labels"]),
        "ServiceMonitor selector"
    );
    assert!(strings(&sm["spec"]["namespaceSelector"]["matchNames"]).contains(&ns));
    let endpoint = &sm["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], port["name"], "ServiceMonitor port");
    assert_eq!(endpoint["path"], "/metrics");
    // The alerts expect job="pincg": prometheus-operator names the job after the Service.
    assert_eq!(svc["metadata"]["name"], "pincg");
    assert!(read("deploy/prometheus/pincg-rules.yaml").contains(r#"up{job="pincg"}"#));
}

// --- PromQL ---------------------------------------------------------------------

/// Metric names in a PromQL expression: identifiers outside label matchers,
/// strings and ranges, that are not functions, keywords or grouping labels.
/// Grafana variables (`$cgroup`, `$__rate_interval`) are ignored.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Operators, and aggregations (which may be followed by `by (...)`
    // rather than by their parenthesis).
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "atan2",
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "limitk",
        "limit_ratio",
    ];
    const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    let chars: Vec<char> = expr.chars().collect();
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    // Index after the bracket matching the one at i (strings inside skipped).
    let skip_group = |mut i: usize, open: char, close: char| {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                '"' | '\'' | '`' => i = skip_string(&chars, i) - 1,
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    let skip_space = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_group(i, '{', '}');
        } else if c == '[' {
            i = skip_group(i, '[', ']');
        } else if c == '$' {
            i += 1;
            if i < chars.len() && chars[i] == '{' {
                i = skip_group(i, '{', '}');
            }
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_') {
                i += 1;
            }
        } else if ident_start(c) {
            let start = i;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_space(i);
            if GROUPING.contains(&word.as_str()) {
                if chars.get(next) == Some(&'(') {
                    i = skip_group(next, '(', ')');
                }
            } else if chars.get(next) == Some(&'(') || KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                // A function or aggregation, or an operator keyword.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        if chars[i] == '\\' && quote != '`' {
            i += 2;
            continue;
        }
        if chars[i] == quote {
            return i + 1;
        }
        i += 1;
    }
    i
}

/// A Grafana variable query: `label_values(selector, label)` queries the
/// selector; anything else is PromQL.
fn variable_expr(query: &str) -> Option<String> {
    let q = query.trim();
    match q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')) {
        Some(inner) => inner.rfind(',').map(|comma| inner[..comma].to_string()),
        None => Some(q.to_string()),
    }
}

fn allowed() -> BTreeSet<&'static str> {
    EXPORTED.iter().chain(UPCOMING).chain(PROMETHEUS).copied().collect()
}

fn assert_known(exprs: &[(String, String)], what: &str) -> BTreeSet<String> {
    let allowed = allowed();
    let mut used = BTreeSet::new();
    for (where_, expr) in exprs {
        let names = metric_names(expr);
        println!("{what} {where_}: {expr}\n    metrics: {names:?}");
        let unknown: Vec<_> = names.iter().filter(|n| !allowed.contains(n.as_str())).collect();
        assert!(unknown.is_empty(), "{what} {where_} uses metrics pincg does not export: {unknown:?} in {expr}");
        assert!(!names.is_empty(), "{what} {where_}: no metric found in {expr}");
        used.extend(names);
    }
    used
}

#[test]
fn metric_name_extraction() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"sum by (instance, cgroup) (rate(pincg_ledger_events_total{instance=~"$instance", event=~"a|b"}[$__rate_interval]))"#
        ),
        ["pincg_ledger_events_total"]
    );
    assert_eq!(
        names(r#"pincg_current_bytes / (pincg_limit_bytes > 0) > 0.9"#),
        ["pincg_current_bytes", "pincg_limit_bytes"]
    );
    assert_eq!(names(r#"up{job="pincg"} == 0 or absent(up{job="pincg"})"#), ["up"]);
    assert_eq!(names(r#"count(pincg_hook_attached{x="}"} == 0) or vector(0)"#), ["pincg_hook_attached"]);
    assert_eq!(
        names("topk(15, node_memory_MemTotal_bytes offset 5m) * on(instance) group_left(version) pincg_build_info"),
        ["node_memory_MemTotal_bytes", "pincg_build_info"]
    );
    assert_eq!(
        variable_expr(r#"label_values(pincg_current_bytes{instance=~"$instance"}, cgroup)"#).as_deref(),
        Some(r#"pincg_current_bytes{instance=~"$instance"}"#)
    );
    assert_eq!(variable_expr("label_values(instance)"), None);
}

#[test]
fn exported_metrics_are_the_agents() {
    // metrics.rs names the node-wide families, columns.rs the per-cgroup ones.
    let source = read("agent/src/metrics.rs") + &read("agent/src/columns.rs");
    for name in EXPORTED {
        assert!(source.contains(&format!("\"{name}\"")), "agent/src/metrics.rs and columns.rs no longer export {name}");
    }
    let ops = read("docs/operations.md");
    for name in EXPORTED {
        assert!(ops.contains(&format!("`{name}`")), "docs/operations.md does not document {name}");
    }
}

#[test]
fn dashboard_queries_only_known_metrics() {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/pincg-dashboard.json")).expect("dashboard JSON");
    let mut exprs = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().expect("panels").iter().collect();
    while let Some(panel) = panels.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            panels.extend(inner);
        }
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr =
                t["expr"].as_str().unwrap_or_else(|| panic!("panel {} has a target without expr", panel["title"]));
            exprs.push((format!("panel {} {}", panel["title"], t["refId"]), expr.to_string()));
        }
    }
    let variables = dashboard["templating"]["list"].as_array().expect("templating");
    assert!(variables.iter().any(|v| v["name"] == "cgroup" && v["type"] == "query"), "a cgroup template variable");
    for v in variables.iter().filter(|v| v["type"] == "query") {
        let query = v["query"].as_str().or(v["query"]["query"].as_str()).expect("variable query");
        if let Some(expr) = variable_expr(query) {
            exprs.push((format!("variable {}", v["name"]), expr));
        }
    }
    assert!(exprs.len() >= 10, "only {} expressions", exprs.len());
    let used = assert_known(&exprs, "dashboard");
    for needed in [
        "pincg_pinned_bytes",
        "pincg_current_bytes",
        "pincg_limit_bytes",
        "pincg_hook_attached",
        "pincg_ledger_events_total",
    ] {
        assert!(used.contains(needed), "the dashboard does not show {needed}");
    }
    assert!(exprs.iter().any(|(_, e)| e.contains(r#"cgroup=~"$cgroup""#)), "no panel filters by the cgroup variable");
}

/// `expr:` values of a Prometheus rules file (plain scalars, quoted, or
/// block scalars), read without a YAML parser.
fn rule_exprs(text: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    let mut alert = String::from("?");
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start().trim_start_matches("- ");
        if let Some(name) = t.strip_prefix("alert:").or_else(|| t.strip_prefix("record:")) {
            alert = name.trim().to_string();
        }
        let Some(value) = t.strip_prefix("expr:") else { continue };
        let value = value.trim();
        let expr = if value.starts_with('|') || value.starts_with('>') {
            lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
                .map(|l| l.trim())
                .collect::<Vec<_>>()
                .join(" ")
        } else if let Some(q) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
            q.replace("''", "'")
        } else if value.starts_with('"') {
            serde_json::from_str::<String>(value).expect("a double-quoted expr")
        } else {
            value.to_string()
        };
        out.push((alert.clone(), expr.trim().to_string()));
    }
    out
}

#[test]
fn alerts_query_only_known_metrics() {
    let exprs = rule_exprs(&read("deploy/prometheus/pincg-rules.yaml"));
    let alerts: Vec<&str> = exprs.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        alerts,
        ["PinnedBytesNearBudget", "PinRefusals", "AgentDown", "HooksMissing", "LedgerAnomalies", "LedgerNearlyFull"]
    );
    assert_known(&exprs, "alert");
    let test = read("deploy/prometheus/pincg-rules.test.yaml");
    for alert in ["HooksMissing", "LedgerAnomalies", "LedgerNearlyFull"] {
        assert!(test.contains(&format!("alertname: {alert}")), "pincg-rules.test.yaml does not test {alert}");
    }
}

/// The libvirt hook writes guest memory plus overhead as pins.max, under the
/// scope libvirt will create (systemd escaping), before the cgroup exists.
#[test]
fn libvirt_hook_writes_the_vm_budget() {
    let mirror = tempfile::tempdir().expect("a temporary directory");
    let xml = "<domain type='kvm' id='12'><name>db-1</name><memory unit='GiB'>16</memory>\
               <resource><partition>/machine/tenant-a</partition></resource></domain>";
    let env = [("PINCG_MIRROR_ROOT", mirror.path().as_os_str()), ("PINCG_OVERHEAD", "512M".as_ref())];
    pincg_tests::libvirt::run_hook("db-1", xml, &env).expect("the hook runs");
    let file =
        mirror.path().join("machine.slice/machine-tenant\\x2da.slice/machine-qemu\\x2d12\\x2ddb\\x2d1.scope/pins.max");
    assert_eq!(std::fs::read_to_string(&file).expect("pins.max written"), format!("{}\n", (16u64 << 30) + (512 << 20)));
}
