//! Which BPF program variant serves each hook on the running kernel.
//!
//! Kernel functions change signature between releases (6.1, 6.12, 7.x), so
//! each hook lists its variants; the first whose target function exists in
//! the kernel's BTF with the expected number of parameters is loaded. A
//! source is loaded only when every one of its hooks has a variant: charges
//! without their releases would drift.

use libbpf_rs::btf::types::{Func, FuncProto};
use libbpf_rs::btf::BtfType;
use libbpf_rs::{Btf, ReferencesType};
use pincg_cgroup_spec::Source;

use crate::Error;

/// One program set that can serve a hook, and the kernel function it needs.
#[derive(Debug, PartialEq, Eq)]
pub struct Variant {
    /// The program's function name in `src/bpf/<object>.bpf.c`.
    pub program: &'static str,
    /// Further programs that serve the hook together with `program` (a
    /// kretprobe paired with its kprobe).
    pub companions: &'static [&'static str],
    /// The kernel function it attaches to.
    pub function: &'static str,
    /// That function's parameter count on the kernels this variant serves.
    pub params: usize,
}

/// A point in a pin source's lifecycle that pincg must observe.
#[derive(Debug)]
pub struct Hook {
    /// `<source>:<what>`, as shown by `pincg probe` and the metrics.
    pub name: &'static str,
    pub variants: &'static [Variant],
}

/// The hooks of one pin source, all in one BPF object.
#[derive(Debug)]
pub struct SourceHooks {
    pub source: Source,
    /// The BPF object (`src/bpf/<object>.bpf.c`).
    pub object: &'static str,
    pub hooks: &'static [Hook],
}

pub const IO_URING: SourceHooks = SourceHooks {
    source: Source::IoUring,
    object: "io_uring",
    hooks: &[
        Hook {
            name: "io_uring:register",
            variants: &[
                Variant { program: "io_uring_register_v61", companions: &["io_uring_registered_v61"], function: "io_sqe_buffer_register", params: 4 },
                Variant { program: "io_uring_register_v613", companions: &[], function: "io_sqe_buffer_register", params: 3 },
                Variant { program: "io_uring_register_v72", companions: &[], function: "io_sqe_buffer_register", params: 2 },
            ],
        },
        Hook {
            name: "io_uring:release",
            variants: &[
                Variant { program: "io_uring_unmap_v61", companions: &[], function: "io_buffer_unmap", params: 2 },
                Variant { program: "io_uring_free_node_v72", companions: &[], function: "io_free_rsrc_node", params: 2 },
            ],
        },
    ],
};

/// Every source pincg can load, in load order.
pub const ALL_SOURCES: &[&SourceHooks] = &[&IO_URING];

/// What the kernel offers: parameter counts of its functions.
pub trait FunctionCatalog {
    /// The parameter count of `function`, or `None` if the kernel has no
    /// such function in its BTF.
    fn params(&self, function: &str) -> Option<usize>;
}

/// The running kernel's BTF (`/sys/kernel/btf/vmlinux`).
pub struct KernelBtf {
    btf: Btf<'static>,
}

impl KernelBtf {
    pub fn load() -> Result<KernelBtf, Error> {
        Btf::from_vmlinux()
            .map(|btf| KernelBtf { btf })
            .map_err(|source| Error::BadBtf { path: "/sys/kernel/btf/vmlinux".into(), source })
    }
}

impl Variant {
    /// Every program of this variant.
    pub fn programs(&self) -> impl Iterator<Item = &'static str> {
        std::iter::once(self.program).chain(self.companions.iter().copied())
    }
}

impl FunctionCatalog for KernelBtf {
    fn params(&self, function: &str) -> Option<usize> {
        let func: Func<'_> = self.btf.type_by_name(function)?;
        let proto: BtfType<'_> = func.referenced_type();
        FuncProto::try_from(proto).ok().map(|p| p.len())
    }
}

/// The variant chosen for each hook of `source`, in hook order.
pub fn select(source: &SourceHooks, kernel: &dyn FunctionCatalog) -> Result<Vec<&'static Variant>, Error> {
    source
        .hooks
        .iter()
        .map(|hook| {
            hook.variants
                .iter()
                .find(|v| kernel.params(v.function) == Some(v.params))
                .ok_or_else(|| Error::HookUnavailable { hook: hook.name, reason: missing_reason(hook, kernel) })
        })
        .collect()
}

fn missing_reason(hook: &Hook, kernel: &dyn FunctionCatalog) -> String {
    let seen: Vec<String> = hook
        .variants
        .iter()
        .map(|v| match kernel.params(v.function) {
            Some(n) => format!("{} has {n} parameters, variant {} expects {}", v.function, v.program, v.params),
            None => format!("{} is not in the kernel's BTF", v.function),
        })
        .collect();
    format!("no program variant fits this kernel ({})", seen.join("; "))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct FakeKernel(HashMap<&'static str, usize>);

    impl FunctionCatalog for FakeKernel {
        fn params(&self, function: &str) -> Option<usize> {
            self.0.get(function).copied()
        }
    }

    fn programs(kernel: &FakeKernel) -> Vec<&'static str> {
        select(&IO_URING, kernel).unwrap().iter().map(|v| v.program).collect()
    }

    #[test]
    fn io_uring_on_6_1_and_6_12() {
        let k = FakeKernel(HashMap::from([("io_sqe_buffer_register", 4), ("io_buffer_unmap", 2)]));
        assert_eq!(programs(&k), ["io_uring_register_v61", "io_uring_unmap_v61"]);
    }

    #[test]
    fn io_uring_on_6_13_to_7_1() {
        let k = FakeKernel(HashMap::from([("io_sqe_buffer_register", 3), ("io_free_rsrc_node", 2)]));
        assert_eq!(programs(&k), ["io_uring_register_v613", "io_uring_free_node_v72"]);
    }

    #[test]
    fn io_uring_on_7_x() {
        let k = FakeKernel(HashMap::from([("io_sqe_buffer_register", 2), ("io_free_rsrc_node", 2)]));
        assert_eq!(programs(&k), ["io_uring_register_v72", "io_uring_free_node_v72"]);
    }

    #[test]
    fn a_missing_hook_is_named_with_what_was_seen() {
        let k = FakeKernel(HashMap::from([("io_sqe_buffer_register", 5)]));
        let err = select(&IO_URING, &k).unwrap_err().to_string();
        assert!(err.starts_with("hook io_uring:register: no program variant fits this kernel"), "{err}");
        assert!(err.contains("io_sqe_buffer_register has 5 parameters, variant io_uring_register_v61 expects 4"));
    }
}
