//! A pod's cgroup from the cgroup parent NRI reports: kubelet's cgroupfs
//! driver gives a path (`/kubepods/burstable/pod<uid>`), its systemd driver
//! a slice name (`kubepods-burstable-pod<uid>.slice`) that systemd nests
//! one level per dash-separated prefix.

/// The pod cgroup's path relative to the cgroup root; `None` if the runtime
/// reported no parent or a path that climbs out of the root.
pub fn pod_cgroup(parent: &str) -> Option<String> {
    let parent = parent.trim();
    if parent.split('/').any(|s| s == ".." || s == ".") {
        return None;
    }
    if !parent.contains('/') && parent.ends_with(".slice") {
        return Some(systemd_slice(parent));
    }
    // A pod's cgroup is never the root ("", "/", "//"): the plugin would
    // write the node's own limit files.
    let path = parent.split('/').filter(|s| !s.is_empty()).collect::<Vec<_>>().join("/");
    (!path.is_empty()).then_some(path)
}

/// `a-b-c.slice` lives at `a.slice/a-b.slice/a-b-c.slice`.
fn systemd_slice(slice: &str) -> String {
    let bare = slice.strip_suffix(".slice").unwrap_or(slice);
    let mut path = Vec::new();
    for (i, _) in bare.match_indices('-') {
        path.push(format!("{}.slice", &bare[..i]));
    }
    path.push(slice.to_string());
    path.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_and_systemd_parents() {
        assert_eq!(pod_cgroup("/kubepods/burstable/pod1234").as_deref(), Some("kubepods/burstable/pod1234"));
        assert_eq!(
            pod_cgroup("kubepods-burstable-pod12_34.slice").as_deref(),
            Some("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12_34.slice")
        );
        assert_eq!(pod_cgroup("kubepods.slice").as_deref(), Some("kubepods.slice"));
        assert_eq!(pod_cgroup(""), None);
        assert_eq!(pod_cgroup("/kubepods/../../etc"), None);
        for root in ["/", "//", " / ", "/./"] {
            assert_eq!(pod_cgroup(root), None, "{root:?} is the root cgroup, never a pod's");
        }
        assert_eq!(pod_cgroup("//kubepods//pod1/").as_deref(), Some("kubepods/pod1"));
    }
}
