//! Labels people can join on, derived from a cgroup's path: Kubernetes
//! pods and containers (kubelet's systemd and cgroupfs drivers, every QoS
//! class, containerd, CRI-O and Docker scopes) and libvirt VMs.

/// The joinable identity of a cgroup; empty strings where not applicable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub pod_uid: String,
    pub container_id: String,
    /// `guaranteed`, `burstable` or `besteffort`.
    pub qos: String,
    pub vm: String,
    /// The pod's namespace and name, from NRI (the path carries only the uid).
    pub namespace: String,
    pub pod: String,
}

/// Read the identity off a relative cgroup path.
///
/// Only the places the kubelet and libvirt create count, so that a
/// delegatee naming its own cgroups cannot take another's labels: the first
/// kubepods cgroup outside `user.slice`, its pod one or two levels below
/// and the container right below the pod; a VM scope whose ancestors are
/// all partitions (`*.slice`, libvirt's `machine` and `*.partition`).
pub fn identify(path: &str) -> Identity {
    let mut id = Identity::default();
    let segments: Vec<String> = path.split('/').map(unescape_systemd).collect();
    let kubepods =
        segments.iter().position(|s| s == "kubepods" || s == "kubepods.slice" || s.ends_with("-kubepods.slice"));
    if let Some(k) = kubepods.filter(|&k| !segments[..k].iter().any(|s| s == "user.slice")) {
        kubernetes(&segments[k + 1..], &mut id);
    }
    // Partitions only (slices, libvirt's `machine` and `*.partition`), not
    // a scope or service a delegatee could make a VM scope in.
    let partition = |s: &String| s == "machine" || s.ends_with(".slice") || s.ends_with(".partition");
    let in_machine_partitions = |i: usize| i > 0 && segments[..i].iter().all(partition);
    id.vm = segments
        .iter()
        .enumerate()
        .find_map(|(i, s)| libvirt_vm(s).filter(|_| in_machine_partitions(i)))
        .unwrap_or_default();
    id
}

/// Pod and container below the kubepods cgroup, e.g. (systemd driver)
/// `kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`
/// or (cgroupfs driver) `burstable/pod<uid>/<id>`.
fn kubernetes(below: &[String], id: &mut Identity) {
    for (i, s) in below.iter().enumerate().take(2) {
        // `kubepods-burstable-pod<uid>.slice` (or kind's `kubelet-kubepods-…`)
        // and `burstable/pod<uid>` alike, as words split on '-' and '/'.
        let bare = s.strip_suffix(".slice").unwrap_or(s);
        let words = bare.split_once("kubepods-").map_or(bare, |(_, rest)| rest);
        for qos in ["burstable", "besteffort"] {
            if words == qos || words.starts_with(&format!("{qos}-")) {
                id.qos = qos.into();
            }
        }
        let pod = words.strip_prefix("pod").or_else(|| words.split_once("-pod").map(|(_, uid)| uid));
        if let Some(uid) = pod {
            // The systemd driver writes the uid with underscores. A pod
            // outside the burstable and besteffort slices is guaranteed.
            id.pod_uid = uid.replace('_', "-");
            if id.qos.is_empty() {
                id.qos = "guaranteed".into();
            }
            id.container_id = below.get(i + 1).and_then(|c| container_id(c)).unwrap_or_default();
            return;
        }
    }
}

/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`, or
/// a bare 64-hex id (cgroupfs driver). Not CRI-O's `crio-conmon-*`.
fn container_id(segment: &str) -> Option<String> {
    let bare = segment.strip_suffix(".scope").unwrap_or(segment);
    let hex = ["cri-containerd-", "crio-", "docker-"].iter().find_map(|p| bare.strip_prefix(p)).unwrap_or(bare);
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hex.to_string())
}

/// libvirt's `machine-qemu-<id>-<name>.scope` (systemd, `\x2d` escapes
/// already undone) or `qemu-<id>-<name>.libvirt-qemu` (cgroupfs).
fn libvirt_vm(segment: &str) -> Option<String> {
    let rest = segment
        .strip_prefix("machine-qemu-")
        .and_then(|r| r.strip_suffix(".scope"))
        .or_else(|| segment.strip_prefix("qemu-").and_then(|r| r.strip_suffix(".libvirt-qemu")))?;
    let (number, name) = rest.split_once('-')?;
    (number.bytes().all(|b| b.is_ascii_digit()) && !name.is_empty()).then(|| name.to_string())
}

/// The guest name of a QEMU process (`-name guest=<name>,...` or
/// `-name <name>`), for VMs whose cgroup path does not name them (KubeVirt's
/// virt-launcher pods). KubeVirt names guests `<namespace>_<vm>`.
pub fn qemu_guest_name(cmdline: &[String]) -> Option<String> {
    let is_qemu = cmdline.first().is_some_and(|argv0| argv0.rsplit('/').next().is_some_and(|b| b.starts_with("qemu")));
    if !is_qemu {
        return None;
    }
    let value = cmdline.iter().skip_while(|a| *a != "-name").nth(1)?;
    let name = value
        .split(',')
        .find_map(|kv| kv.strip_prefix("guest="))
        .or_else(|| value.split(',').next().filter(|v| !v.contains('=')))?;
    Some(name.split_once('_').map_or(name, |(_, vm)| vm).to_string())
}

/// Undo systemd's unit-name escaping (`\x2d` is `-`; a UTF-8 name is
/// escaped byte by byte).
fn unescape_systemd(segment: &str) -> String {
    let mut out = Vec::with_capacity(segment.len());
    let mut rest = segment.as_bytes();
    while !rest.is_empty() {
        let byte = rest.strip_prefix(b"\\x").and_then(|h| std::str::from_utf8(h.get(..2)?).ok());
        match byte.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(b) => {
                out.push(b);
                rest = &rest[4..];
            }
            None => {
                out.push(rest[0]);
                rest = &rest[1..];
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "3c2a5f26-0d1a-4b6e-9c2e-0a1b2c3d4e5f";
    const CID: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

    fn pod(qos: &str) -> Identity {
        Identity {
            pod_uid: UID.into(),
            container_id: CID.into(),
            qos: qos.into(),
            vm: String::new(),
            ..Identity::default()
        }
    }

    #[test]
    fn kubelet_systemd_driver_every_qos_and_runtime() {
        let u = UID.replace('-', "_");
        for runtime in ["cri-containerd", "crio", "docker"] {
            assert_eq!(
                identify(&format!(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/{runtime}-{CID}.scope"
                )),
                pod("burstable"),
                "{runtime}"
            );
        }
        assert_eq!(
            identify(&format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-{CID}.scope"
            )),
            pod("besteffort")
        );
        assert_eq!(identify(&format!("kubepods.slice/kubepods-pod{u}.slice/crio-{CID}.scope")), pod("guaranteed"));
        // kind / minikube nest the kubelet's slice.
        assert_eq!(
            identify(&format!("kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{u}.slice/cri-containerd-{CID}.scope")),
            pod("burstable")
        );
        // CRI-O's conmon is not the container.
        let conmon = identify(&format!("kubepods.slice/kubepods-pod{u}.slice/crio-conmon-{CID}.scope"));
        assert_eq!((conmon.pod_uid.as_str(), conmon.container_id.as_str()), (UID, ""));
    }

    #[test]
    fn kubelet_cgroupfs_driver() {
        assert_eq!(identify(&format!("kubepods/burstable/pod{UID}/{CID}")), pod("burstable"));
        assert_eq!(identify(&format!("kubepods/besteffort/pod{UID}/{CID}")), pod("besteffort"));
        assert_eq!(identify(&format!("kubepods/pod{UID}/{CID}")), pod("guaranteed"));
        assert_eq!(identify("kubepods.slice"), Identity::default(), "the parent of every QoS class");
        assert_eq!(identify("kubepods.slice/kubepods-besteffort.slice").qos, "besteffort");
        let pod_only = identify(&format!("kubepods/pod{UID}"));
        assert_eq!((pod_only.pod_uid.as_str(), pod_only.container_id.as_str()), (UID, ""));
    }

    #[test]
    fn libvirt_machines() {
        assert_eq!(identify("machine.slice/machine-qemu\\x2d1\\x2dvm1.scope").vm, "vm1");
        assert_eq!(identify("machine.slice/machine-qemu\\x2d12\\x2dweb\\x2dfront.scope/libvirt/vcpu0").vm, "web-front");
        assert_eq!(identify("machine/qemu-3-db.libvirt-qemu/emulator").vm, "db");
        assert_eq!(identify("system.slice/libvirtd.service"), Identity::default());
        assert_eq!(identify("machine.slice/machine-lxc\\x2d1\\x2dct.scope"), Identity::default());
    }

    #[test]
    fn kubevirt_guest_names() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let launcher = args(&["/usr/libexec/qemu-kvm", "-name", "guest=default_testvm,debug-threads=on", "-m", "1024"]);
        assert_eq!(qemu_guest_name(&launcher).as_deref(), Some("testvm"));
        assert_eq!(qemu_guest_name(&args(&["qemu-system-x86_64", "-name", "vm7"])).as_deref(), Some("vm7"));
        assert_eq!(qemu_guest_name(&args(&["/bin/sleep", "-name", "x"])), None);
        assert_eq!(qemu_guest_name(&args(&["qemu-kvm", "-m", "1"])), None);
    }

    #[test]
    fn names_a_delegatee_makes_take_no_one_s_labels() {
        // Below a real pod's container, and in a user's delegated slice.
        let nested = identify(&format!("kubepods/pod{UID}/{CID}/kubepods/podvictim/{}", "a".repeat(64)));
        assert_eq!(nested, pod("guaranteed"));
        let user = "user.slice/user-1000.slice/user@1000.service";
        assert_eq!(identify(&format!("{user}/kubepods/pod{UID}/{CID}")), Identity::default());
        assert_eq!(identify(&format!("{user}/machine-qemu\\x2d1\\x2dprod.scope")).vm, "");
        // In a container's scope (systemd-nspawn, libvirt-lxc): no VM.
        assert_eq!(identify("machine.slice/machine-ct.scope/machine-qemu\\x2d2\\x2dprod.scope").vm, "");
        // libvirt's custom partitions.
        assert_eq!(identify("machine/prod.partition/qemu-3-db.libvirt-qemu").vm, "db");
        assert_eq!(identify("production.slice/machine-qemu\\x2d4\\x2dweb.scope").vm, "web");
        // Inside a VM's scope: the first VM named is the VM.
        assert_eq!(
            identify("machine.slice/machine-qemu\\x2d1\\x2dvm1.scope/machine-qemu\\x2d2\\x2dprod.scope").vm,
            "vm1"
        );
    }

    #[test]
    fn escapes() {
        assert_eq!(unescape_systemd("a\\x2db\\x2"), "a-b\\x2");
        assert_eq!(unescape_systemd("caf\\xc3\\xa9"), "café");
    }
}
