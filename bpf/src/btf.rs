//! The running kernel's BTF, vmlinux and loaded modules: which functions
//! exist and how many parameters they take; and which modules it has.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::path::Path;
use std::ptr::NonNull;

use libbpf_rs::libbpf_sys;

use crate::hooks::FunctionCatalog;
use crate::modules::ModuleTree;
use crate::Error;

const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
const MODULE_BTF_DIR: &str = "/sys/kernel/btf";

/// vmlinux BTF plus the split BTF of each module asked about, and the
/// kernel's module tree.
pub struct KernelBtf {
    vmlinux: NonNull<libbpf_sys::btf>,
    modules: RefCell<HashMap<String, Option<NonNull<libbpf_sys::btf>>>>,
    tree: ModuleTree,
}

impl KernelBtf {
    pub fn load() -> Result<KernelBtf, Error> {
        // SAFETY: libbpf allocates and returns an owned BTF object or an error pointer.
        let ptr = unsafe { libbpf_sys::btf__load_vmlinux_btf() };
        match NonNull::new(ptr).filter(|_| unsafe { libbpf_sys::libbpf_get_error(ptr.cast()) } == 0) {
            Some(vmlinux) => Ok(KernelBtf { vmlinux, modules: RefCell::default(), tree: ModuleTree::running() }),
            None => Err(Error::BadBtf {
                path: VMLINUX_BTF.into(),
                source: libbpf_rs::Error::from(std::io::Error::last_os_error()),
            }),
        }
    }

    fn module_btf(&self, module: &str) -> Option<NonNull<libbpf_sys::btf>> {
        *self.modules.borrow_mut().entry(module.to_string()).or_insert_with(|| {
            if !Path::new(MODULE_BTF_DIR).join(module).exists() {
                return None;
            }
            let name = CString::new(module).ok()?;
            // SAFETY: the name is a valid C string; the base BTF outlives the split BTF.
            let ptr = unsafe { libbpf_sys::btf__load_module_btf(name.as_ptr(), self.vmlinux.as_ptr()) };
            NonNull::new(ptr).filter(|_| unsafe { libbpf_sys::libbpf_get_error(ptr.cast()) } == 0)
        })
    }
}

/// Parameter count of FUNC `function` in `btf`.
fn params_in(btf: NonNull<libbpf_sys::btf>, function: &str) -> Option<usize> {
    let name = CString::new(function).ok()?;
    // SAFETY: btf is a live BTF object; the returned type pointers point into it.
    unsafe {
        let id = libbpf_sys::btf__find_by_name_kind(btf.as_ptr(), name.as_ptr(), libbpf_sys::BTF_KIND_FUNC);
        if id <= 0 {
            return None;
        }
        let func = libbpf_sys::btf__type_by_id(btf.as_ptr(), id as u32).as_ref()?;
        let proto = libbpf_sys::btf__type_by_id(btf.as_ptr(), func.__bindgen_anon_1.type_).as_ref()?;
        Some((proto.info & 0xffff) as usize)
    }
}

impl FunctionCatalog for KernelBtf {
    fn params(&self, module: Option<&str>, function: &str) -> Option<usize> {
        // A module's split BTF also holds vmlinux, so a function built in
        // (module option =y) is found either way.
        let btf = module.and_then(|m| self.module_btf(m)).unwrap_or(self.vmlinux);
        params_in(btf, function)
    }

    fn module_loaded(&self, module: &str) -> bool {
        Path::new(MODULE_BTF_DIR).join(module).exists() || Path::new("/sys/module").join(module).exists()
    }

    fn release(&self) -> (u32, u32) {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        parse_release(&release)
    }

    fn module_absence(&self, module: &str) -> Option<String> {
        self.tree.absence(module)
    }
}

/// (major, minor) of a kernel release string such as `6.12.107+deb13-amd64`;
/// (0, 0) if it has none.
fn parse_release(release: &str) -> (u32, u32) {
    let mut numbers = release.trim().split(|c: char| !c.is_ascii_digit()).map(|n| n.parse().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
}

impl Drop for KernelBtf {
    fn drop(&mut self) {
        for btf in self.modules.borrow().values().flatten() {
            // SAFETY: each module BTF was allocated by libbpf and is freed once.
            unsafe { libbpf_sys::btf__free(btf.as_ptr()) };
        }
        // SAFETY: allocated by libbpf in `load`, freed once, after its split BTFs.
        unsafe { libbpf_sys::btf__free(self.vmlinux.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn release_is_major_and_minor() {
        assert_eq!(super::parse_release("7.2.13+deb14-amd64\n"), (7, 2));
        assert_eq!(super::parse_release("6.1.0-50-amd64"), (6, 1));
        assert_eq!(super::parse_release(""), (0, 0));
    }
}
