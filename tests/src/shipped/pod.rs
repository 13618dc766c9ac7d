//! The DaemonSet's pod, built with unshare, mounts, a cgroup and setpriv
//! (docs/testing.md has the table).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::{cap_list, indent, join_cgroup, quote};

/// The pod the DaemonSet makes, as the harness builds it: a PID, mount,
/// IPC and cgroup namespace of its own, in a kubepods cgroup with the
/// container's limits, the host's root file system as the (read-only)
/// image with the built pincg at the command's path, the volumes mounted
/// where the manifest says, the capabilities it lists.
pub struct PodSandbox {
    /// Shell lines run in the host's namespaces (the pod's cgroup).
    outer: Vec<String>,
    /// Shell lines run as PID 1 of the pod's namespaces, before the exec.
    inner: Vec<String>,
    /// The container's command and args.
    argv: Vec<String>,
    setpriv: Vec<String>,
    env: Vec<(String, String)>,
    /// The startupProbe's periodSeconds x failureThreshold.
    pub(super) startup_budget: std::time::Duration,
}

/// The pod's root, built in the guest's /run.
const POD: &str = "/run/pincg-pod";
/// The agent's pod: burstable (requests below limits), containerd.
const POD_CGROUP: &str = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod7e57ab1e_0000_4000_8000_000000000001.slice/cri-containerd-7e57ab1e7e57ab1e7e57ab1e7e57ab1e7e57ab1e7e57ab1e7e57ab1e7e57ab1e.scope";

/// YAML documents as JSON, by Debian's python3-yaml (the guest runs the
/// host's /usr/bin/python3).
fn yaml(path: &Path) -> Result<Vec<Value>> {
    let out = Command::new("/usr/bin/python3")
        .args(["-c", "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))"])
        .arg(path)
        .output()
        .context("running /usr/bin/python3 (python3-yaml)")?;
    ensure!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The keys of a JSON object (none if it is not one).
fn keys(v: &Value) -> Vec<&str> {
    v.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A Kubernetes quantity of memory (`256Mi`) in bytes.
fn k8s_bytes(q: &str) -> Result<u64> {
    for (suffix, shift) in [("Ki", 10), ("Mi", 20), ("Gi", 30)] {
        if let Some(n) = q.strip_suffix(suffix) {
            return Ok(n.parse::<u64>().with_context(|| format!("quantity {q:?}"))? << shift);
        }
    }
    q.parse().with_context(|| format!("quantity {q:?}"))
}

/// A CPU quantity (`500m`, `2`) as cpu.max ("quota period").
fn k8s_cpu_max(q: &str) -> Result<String> {
    let millis: u64 = match q.strip_suffix('m') {
        Some(m) => m.parse()?,
        None => q.parse::<u64>()? * 1000,
    };
    Ok(format!("{} 100000", millis * 100))
}

impl PodSandbox {
    /// The pod of `daemonset`, its ConfigMaps from `configmap`; `config`,
    /// if given, replaces the ConfigMap's config.toml (what an operator's
    /// `kubectl edit configmap pincg-config` does).
    pub fn load(daemonset: &Path, configmap: &Path, config: Option<&str>) -> Result<PodSandbox> {
        let objects = yaml(daemonset)?;
        let ds = objects.iter().find(|o| o["kind"] == "DaemonSet").context("no DaemonSet")?;
        let mut configs = yaml(configmap)?;
        if let Some(text) = config {
            let cm = configs
                .iter_mut()
                .find(|o| o["kind"] == "ConfigMap" && o["data"]["config.toml"].is_string())
                .with_context(|| format!("{}: no ConfigMap with a config.toml", configmap.display()))?;
            cm["data"]["config.toml"] = Value::String(text.to_string());
        }
        PodSandbox::build(ds, &configs).with_context(|| daemonset.display().to_string())
    }

    fn build(ds: &Value, configmaps: &[Value]) -> Result<PodSandbox> {
        let spec = &ds["spec"]["template"]["spec"];
        let mut pod = PodSandbox {
            outer: Vec::new(),
            inner: Vec::new(),
            argv: Vec::new(),
            setpriv: Vec::new(),
            env: Vec::new(),
            startup_budget: std::time::Duration::from_secs(30),
        };
        for key in keys(spec) {
            let v = &spec[key];
            match (key, v) {
                // API objects, scheduling, shutdown: nothing on the node to apply.
                (
                    "serviceAccountName"
                    | "priorityClassName"
                    | "tolerations"
                    | "nodeSelector"
                    | "terminationGracePeriodSeconds",
                    _,
                ) => {}
                ("automountServiceAccountToken" | "enableServiceLinks", Value::Bool(false)) => {}
                // The pod's network namespace would hide the metrics port
                // from the scenario; the agent listens on 0.0.0.0 (the
                // manifest's --listen) in the guest's.
                ("hostNetwork", Value::Bool(false)) => {}
                ("hostPID" | "hostIPC", Value::Bool(false)) => {} // unshare --pid / --ipc below
                ("containers" | "volumes", _) => {}
                _ => bail!(
                    "pod spec {key}: {v}: the guest harness does not know how to apply this (tests/src/shipped.rs)"
                ),
            }
        }
        let containers = spec["containers"].as_array().context("no containers")?;
        ensure!(containers.len() == 1, "{} containers; the harness builds one", containers.len());
        let c = &containers[0];
        let root = format!("{POD}/root");
        let mut cgroup_files: Vec<(&str, String)> = Vec::new();
        let mut mounts: Vec<String> = Vec::new();
        let mut read_only_root = false;
        for key in keys(c) {
            let v = &c[key];
            match key {
                // The image is the guest's (the host's) root file system;
                // the command's program is bound to the built pincg.
                "name" | "image" | "imagePullPolicy" => {}
                "command" | "args" => {}
                // No network namespace (see hostNetwork); Agent::start
                // waits for /healthz as long as the startup probe does.
                "ports" | "readinessProbe" | "livenessProbe" => {}
                "startupProbe" => {
                    let (period, failures) = (v["periodSeconds"].as_u64(), v["failureThreshold"].as_u64());
                    let budget =
                        period.zip(failures).context("startupProbe without periodSeconds and failureThreshold")?;
                    pod.startup_budget = std::time::Duration::from_secs(budget.0 * budget.1);
                }
                "env" => {
                    for e in v.as_array().context("env")? {
                        let name = text(&e["name"]);
                        let value = match (&e["value"], &e["valueFrom"]["fieldRef"]["fieldPath"]) {
                            (Value::String(s), _) => s.clone(),
                            (_, Value::String(f)) if f == "spec.nodeName" => "pincg-guest".into(),
                            _ => bail!("env {name}: {e}: not known to the harness"),
                        };
                        pod.env.push((name, value));
                    }
                }
                "resources" => {
                    for (k, q) in v["limits"].as_object().into_iter().flatten() {
                        match k.as_str() {
                            "memory" => cgroup_files.push(("memory.max", k8s_bytes(&text(q))?.to_string())),
                            "cpu" => cgroup_files.push(("cpu.max", k8s_cpu_max(&text(q))?)),
                            other => bail!("resources.limits.{other}: not known to the harness"),
                        }
                    }
                    // Requests only schedule.
                    if let Some(k) = keys(v).into_iter().find(|k| *k != "limits" && *k != "requests") {
                        bail!("resources.{k}: not known to the harness");
                    }
                }
                "securityContext" => pod.security(v, &mut read_only_root)?,
                "volumeMounts" => {
                    for m in v.as_array().context("volumeMounts")? {
                        mounts.push(volume_mount(m, spec, configmaps)?);
                    }
                }
                other => bail!(
                    "container {other}: {v}: the guest harness does not know how to apply this (tests/src/shipped.rs)"
                ),
            }
        }
        pod.argv = c["command"].as_array().context("command")?.iter().map(text).collect();
        pod.argv.extend(c["args"].as_array().into_iter().flatten().map(text));
        ensure!(
            pod.argv.first().is_some_and(|p| p.ends_with("/pincg")),
            "the container runs {:?}, not pincg",
            pod.argv
        );

        pod.outer = join_cgroup(POD_CGROUP, &cgroup_files);
        pod.outer.push(format!("rm -rf {POD} && mkdir -p {POD}/root {POD}/upper {POD}/work"));
        // PID 1 of the pod's namespaces: its root is an overlay over the
        // guest's / (the image), its /proc that of its PID namespace, its
        // /sys read-only with the cgroup namespace's cgroupfs (what a
        // container runtime mounts for an unprivileged container).
        let program = &pod.argv[0];
        let mut inner = vec![
            format!("mount -t overlay -o lowerdir=/,upperdir={POD}/upper,workdir={POD}/work overlay {root}"),
            format!("cd {root}"),
            "mount -t proc proc proc".into(),
            "mount -t sysfs -o ro sysfs sys".into(),
            "mount -t cgroup2 -o ro cgroup2 sys/fs/cgroup".into(),
            "mount -t tmpfs -o mode=755 tmpfs dev".into(),
            "for d in null zero full random urandom tty; do touch dev/$d && mount --bind /dev/$d dev/$d; done".into(),
            "mount -t tmpfs -o mode=755 tmpfs run".into(),
            "mkdir -p .oldroot".into(),
            format!(
                "mkdir -p {} && touch {} && mount --bind \"$1\" {}",
                quote(&format!(".{}", parent(program))),
                quote(&format!(".{program}")),
                quote(&format!(".{program}"))
            ),
        ];
        inner.extend(mounts);
        if read_only_root {
            inner.push(format!("mount -o remount,bind,ro {root}"));
        }
        inner.push("pivot_root . .oldroot && cd / && umount -l /.oldroot".into());
        pod.inner = inner;
        Ok(pod)
    }

    fn security(&mut self, sc: &Value, read_only_root: &mut bool) -> Result<()> {
        for key in keys(sc) {
            let v = &sc[key];
            match (key, v) {
                ("privileged" | "runAsNonRoot", Value::Bool(false)) => {}
                ("allowPrivilegeEscalation", Value::Bool(false)) => self.setpriv.push("--no-new-privs".into()),
                ("readOnlyRootFilesystem", Value::Bool(b)) => *read_only_root = *b,
                ("runAsUser", n) => self.setpriv.push(format!("--reuid={n}")),
                ("runAsGroup", n) => self.setpriv.push(format!("--regid={n} --clear-groups")),
                // The runtime's default seccomp profile allows what the
                // capabilities allow (bpf, perf_event_open, mount with
                // CAP_SYS_ADMIN); the guest has no AppArmor.
                ("seccompProfile", _) if v["type"] == "RuntimeDefault" => {}
                ("appArmorProfile", _) if v["type"] == "Unconfined" => {}
                ("capabilities", _) => {
                    let drop: Vec<String> = v["drop"].as_array().into_iter().flatten().map(text).collect();
                    ensure!(drop == ["ALL"], "capabilities.drop {drop:?}: the harness knows only [ALL]");
                    if let Some(k) = keys(v).into_iter().find(|k| *k != "drop" && *k != "add") {
                        bail!("capabilities.{k}: not known to the harness");
                    }
                    let add: Vec<String> = v["add"].as_array().into_iter().flatten().map(text).collect();
                    // A container's capabilities: bounding = permitted =
                    // effective = the list for uid 0, nothing inheritable
                    // or ambient.
                    self.setpriv.push(format!("--bounding-set={} --inh-caps=-all --ambient-caps=-all", cap_list(&add)));
                }
                _ => bail!("securityContext {key}: {v}: the guest harness does not know how to apply this (tests/src/shipped.rs)"),
            }
        }
        Ok(())
    }

    pub(super) fn command(&self, agent: &Path, flags: &[&str]) -> Result<Command> {
        let mut inner = self.inner.join("\n");
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={}", quote(v))).collect();
        let argv: Vec<String> = self.argv.iter().map(|a| quote(a)).chain(flags.iter().map(|f| quote(f))).collect();
        inner.push_str(&format!(
            "\nexec env {} setpriv {} -- {}\n",
            env.join(" "),
            self.setpriv.join(" "),
            argv.join(" ")
        ));
        let mut outer = self.outer.join("\n");
        outer.push_str(&format!(
            "\nexec unshare --mount --propagation slave --pid --fork --kill-child --ipc --cgroup -- /bin/sh -ec {} sh \"$1\"\n",
            quote(&inner)
        ));
        println!("   the DaemonSet's pod, built:\n{}", indent(&outer));
        println!("   and inside it (PID 1 of its namespaces):\n{}", indent(&inner));
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-ec", &outer, "sh"]).arg(agent);
        Ok(cmd)
    }
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("/", |(dir, _)| if dir.is_empty() { "/" } else { dir })
}

/// Shell lines that mount one of the container's volumeMounts (relative to
/// the pod's root, the current directory).
fn volume_mount(m: &Value, spec: &Value, configmaps: &[Value]) -> Result<String> {
    let name = text(&m["name"]);
    let target = format!(".{}", in_image(&text(&m["mountPath"]))?);
    let mut read_only = false;
    for key in keys(m) {
        match (key, &m[key]) {
            ("name" | "mountPath", _) => {}
            ("readOnly", Value::Bool(b)) => read_only = *b,
            // The pod's mount namespace is a slave of the guest's: host
            // mounts made later propagate in.
            ("mountPropagation", Value::String(p)) if p == "HostToContainer" => {}
            (k, v) => bail!("volumeMount {name}: {k}: {v}: not known to the harness"),
        }
    }
    let volume = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == name.as_str())
        .with_context(|| format!("volumeMount {name}: no such volume"))?;
    let ro = if read_only { format!(" && mount -o remount,bind,ro {}", quote(&target)) } else { String::new() };
    let kinds: Vec<&str> = keys(volume).into_iter().filter(|k| *k != "name").collect();
    match kinds.as_slice() {
        ["hostPath"] => {
            // The host's path: before pivot_root the pod's mount namespace
            // still has the guest's / at /.
            let host = quote(&text(&volume["hostPath"]["path"]));
            let check = match volume["hostPath"]["type"].as_str() {
                Some("Directory") => format!("[ -d {host} ]"),
                Some("DirectoryOrCreate") => format!("mkdir -p {host}"),
                other => bail!("volume {name}: hostPath type {other:?}: not known to the harness"),
            };
            Ok(format!("{check} && mkdir -p {0} && mount --bind {host} {0}{ro}", quote(&target)))
        }
        ["configMap"] => {
            let cm_name = text(&volume["configMap"]["name"]);
            let cm = configmaps.iter().find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == cm_name.as_str());
            let mut lines = vec![format!("mkdir -p {0} && mount -t tmpfs -o mode=755 tmpfs {0}", quote(&target))];
            match cm {
                Some(cm) => {
                    for (file, content) in cm["data"].as_object().into_iter().flatten() {
                        let path = format!("{target}/{file}");
                        lines.push(format!("printf '%s' {} > {}", quote(&text(content)), quote(&path)));
                    }
                }
                None if volume["configMap"]["optional"] == true => {}
                None => bail!("volume {name}: ConfigMap {cm_name} not found"),
            }
            lines.push(format!("true{ro}"));
            Ok(lines.join(" && "))
        }
        other => bail!("volume {name}: {other:?}: not known to the harness"),
    }
}

/// `path` with the image's symbolic links resolved inside the image, as a
/// runtime resolves a mount point in the container's root (runc's
/// securejoin): Debian's `/var/run` is a link to `/run`, so the NRI
/// socket's `/var/run/nri` is mounted at the pod's `/run/nri`. The image is
/// the guest's root file system.
fn in_image(path: &str) -> Result<String> {
    let mut resolved: Vec<String> = Vec::new();
    let mut pending: Vec<String> = path.split('/').filter(|c| !c.is_empty()).rev().map(String::from).collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let here = format!("/{}", resolved.iter().chain([&part]).cloned().collect::<Vec<_>>().join("/"));
        match std::fs::read_link(&here) {
            Ok(link) => {
                links += 1;
                ensure!(links <= 40, "mount point {path}: too many symbolic links");
                let link = link.to_string_lossy().into_owned();
                if link.starts_with('/') {
                    resolved.clear();
                }
                pending.extend(link.split('/').filter(|c| !c.is_empty()).rev().map(String::from));
            }
            Err(_) => resolved.push(part),
        }
    }
    Ok(format!("/{}", resolved.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shipped::deploy_file;

    #[test]
    fn the_shipped_daemonset_is_applied_field_by_field() {
        let pod = PodSandbox::load(
            &deploy_file("kubernetes/base/daemonset.yaml"),
            &deploy_file("kubernetes/base/configmap.yaml"),
            None,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(pod.argv[..2], ["/usr/local/bin/pincg", "agent"]);
        assert!(pod.argv.contains(&"--cgroup-root=/host/sys/fs/cgroup".to_string()), "{:?}", pod.argv);
        assert!(
            pod.setpriv.iter().any(|o| o.starts_with("--bounding-set=-all,+bpf,+perfmon,+sys_admin")),
            "{:?}",
            pod.setpriv
        );
        assert!(pod.setpriv.contains(&"--no-new-privs".to_string()));
        assert!(pod.outer.iter().any(|l| l.contains("memory.max") && l.contains("268435456")), "{:?}", pod.outer);
        assert!(pod.inner.iter().any(|l| l.contains("mount --bind '/sys/fs/cgroup' './host/sys/fs/cgroup' && mount -o remount,bind,ro")), "{:?}", pod.inner);
        assert_eq!(pod.startup_budget, std::time::Duration::from_secs(60));
        let mut ds = yaml(&deploy_file("kubernetes/base/daemonset.yaml")).unwrap().remove(0);
        ds["spec"]["template"]["spec"]["hostUsers"] = Value::Bool(false);
        let err = PodSandbox::build(&ds, &[]).err().unwrap();
        assert!(format!("{err:#}").contains("pod spec hostUsers: false: the guest harness does not know"), "{err:#}");
    }

    #[test]
    fn sizes() {
        assert_eq!(k8s_bytes("256Mi").unwrap(), 268435456);
        assert_eq!(k8s_cpu_max("500m").unwrap(), "50000 100000");
        assert_eq!(parent("/usr/local/bin/pincg"), "/usr/local/bin");
    }

    #[test]
    fn mount_points_resolve_inside_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        std::fs::create_dir_all(format!("{root}/real/sub")).unwrap();
        std::os::unix::fs::symlink(format!("{root}/real"), format!("{root}/abs")).unwrap();
        std::os::unix::fs::symlink("real/sub", format!("{root}/rel")).unwrap();
        assert_eq!(in_image(&format!("{root}/abs/x")).unwrap(), format!("{root}/real/x"));
        assert_eq!(in_image(&format!("{root}/rel/../y")).unwrap(), format!("{root}/real/y"));
        assert_eq!(in_image("/sys/fs/bpf").unwrap(), "/sys/fs/bpf");
    }
}
