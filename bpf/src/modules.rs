//! The running kernel's module tree (`/lib/modules/<release>`): whether a
//! module pincg hooks is built for this kernel at all, so a hook in a
//! module the kernel does not have (VDUSE on 6.1) is reported unavailable,
//! with the reason, rather than waiting forever for the module to appear.

use std::fs;
use std::path::{Path, PathBuf};

/// Where the module trees of kernel releases are; the environment
/// variable `PINCG_MODULE_TREE` names another place (a container that
/// mounts the host's elsewhere, a test guest that keeps them apart).
pub const MODULE_TREE: &str = "/lib/modules";
pub const MODULE_TREE_ENV: &str = "PINCG_MODULE_TREE";

/// A kernel release's module tree.
#[derive(Debug, Clone)]
pub struct ModuleTree {
    dir: PathBuf,
}

impl ModuleTree {
    /// The running kernel's tree, `/lib/modules/$(uname -r)`.
    pub fn running() -> ModuleTree {
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let trees = std::env::var_os(MODULE_TREE_ENV).map_or_else(|| PathBuf::from(MODULE_TREE), PathBuf::from);
        ModuleTree::at(&trees.join(release.trim()))
    }

    pub fn at(dir: &Path) -> ModuleTree {
        ModuleTree { dir: dir.to_path_buf() }
    }

    /// Why `module` cannot be loaded on this kernel: neither `modules.dep`
    /// (loadable modules) nor `modules.builtin` lists it. `None` when it is
    /// listed, or when the tree cannot be read (a container without
    /// `/lib/modules`): then it may still appear.
    pub fn absence(&self, module: &str) -> Option<String> {
        let dep = self.dir.join("modules.dep");
        let loadable = fs::read_to_string(&dep).ok()?;
        let builtin = fs::read_to_string(self.dir.join("modules.builtin")).unwrap_or_default();
        let listed = loadable.lines().filter_map(|l| l.split_once(':').map(|(path, _)| path)).chain(builtin.lines());
        let wanted = normalise(module);
        if listed.map(module_name).any(|name| name == wanted) {
            return None;
        }
        Some(format!("module {module} is not built for this kernel (not in {} nor modules.builtin)", dep.display()))
    }
}

/// `kernel/drivers/vdpa/vdpa_user/vduse.ko.xz` → `vduse`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    normalise(file.split_once(".ko").map_or(file, |(name, _)| name))
}

/// Module names treat `-` and `_` alike.
fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh module tree: `modules.dep`, and `modules.builtin` if given,
    /// in a directory removed when the returned guard drops.
    fn tree(dep: &str, builtin: Option<&str>) -> (tempfile::TempDir, ModuleTree) {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("modules.dep"), dep).unwrap();
        if let Some(builtin) = builtin {
            fs::write(dir.path().join("modules.builtin"), builtin).unwrap();
        }
        let tree = ModuleTree::at(dir.path());
        (dir, tree)
    }

    #[test]
    fn a_module_in_modules_dep_or_builtin_is_built() {
        let dep = "kernel/drivers/vdpa/vdpa_user/vduse.ko.xz: kernel/drivers/vdpa/vdpa.ko.xz\n\
                   kernel/drivers/vfio/vfio_iommu_type1.ko.zst: kernel/drivers/vfio/vfio.ko.zst\n";
        let (_dir, t) = tree(dep, Some("kernel/drivers/infiniband/core/ib_core.ko\n"));
        assert_eq!(t.absence("vduse"), None);
        assert_eq!(t.absence("vfio_iommu_type1"), None);
        assert_eq!(t.absence("vfio-iommu-type1"), None, "- and _ are the same");
        assert_eq!(t.absence("ib_core"), None, "built in");
    }

    #[test]
    fn a_module_listed_nowhere_is_absent_with_where_it_was_looked_for() {
        let (dir, t) = tree("kernel/drivers/vfio/vfio.ko.xz:\n", None);
        let reason = t.absence("vduse").expect("vduse is absent");
        let dep = dir.path().join("modules.dep");
        assert_eq!(
            reason,
            format!("module vduse is not built for this kernel (not in {} nor modules.builtin)", dep.display())
        );
        assert_eq!(t.absence("vduse_extra"), Some(reason.replace("vduse ", "vduse_extra ")), "no prefix match");
    }

    #[test]
    fn an_unreadable_tree_says_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none/6.1.0-99-amd64");
        assert_eq!(ModuleTree::at(&missing).absence("vduse"), None);
    }
}
