//! Which BPF program variant serves each hook on the running kernel.
//!
//! Kernel functions change signature between releases (6.1, 6.12, 7.x), so
//! each hook lists its variants; the first whose target function exists in
//! the kernel's BTF with the expected number of parameters is loaded. A
//! source is loaded only when every one of its hooks has a variant: charges
//! without their releases would drift.

use pincg_cgroup_spec::Source;

use crate::Error;

/// One BPF program and the kernel function it attaches to.
#[derive(Debug, PartialEq, Eq)]
pub struct Attach {
    /// The program's function name in `src/bpf/<object>.bpf.c`.
    pub program: &'static str,
    /// The kernel function it attaches to.
    pub function: &'static str,
    /// That function's parameter count on the kernels this serves.
    pub params: usize,
    /// The module holding the function; `None` for vmlinux.
    pub module: Option<&'static str>,
}

/// The programs that together serve a hook on one range of kernels. It
/// fits a kernel when every target function exists with its arity.
#[derive(Debug, PartialEq, Eq)]
pub struct Variant {
    pub attach: &'static [Attach],
}

impl Variant {
    /// The program that names the variant in reports.
    pub fn primary(&self) -> &'static str {
        self.attach[0].program
    }

    pub fn programs(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.attach.iter().map(|a| a.program)
    }

    fn fits(&self, kernel: &dyn FunctionCatalog) -> bool {
        self.attach.iter().all(|a| kernel.params(a.module, a.function) == Some(a.params))
    }

    /// Modules whose functions this variant attaches to.
    pub fn modules(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.attach.iter().filter_map(|a| a.module)
    }
}

const fn attach(program: &'static str, function: &'static str, params: usize) -> Attach {
    Attach { program, function, params, module: None }
}

const fn attach_mod(program: &'static str, module: &'static str, function: &'static str, params: usize) -> Attach {
    Attach { program, function, params, module: Some(module) }
}

/// A point in a pin source's lifecycle that pincg must observe.
#[derive(Debug)]
pub struct Hook {
    /// `<source>:<what>`, as shown by `pincg probe` and the metrics.
    pub name: &'static str,
    /// The pin source the hook serves.
    pub source: Source,
    pub variants: &'static [Variant],
}

/// What a kernel must be, beyond having the functions, for an object to
/// load: a verifier rule that BTF cannot show.
#[derive(Debug)]
pub struct KernelRequirement {
    /// Lowest kernel release (major, minor).
    pub release: (u32, u32),
    /// Why, for `pincg probe`.
    pub why: &'static str,
}

/// Hooks that load together, from one BPF object (one per pin source, and
/// one for the refusal points).
#[derive(Debug)]
pub struct SourceHooks {
    /// The BPF object (`src/bpf/<object>.bpf.c`).
    pub object: &'static str,
    pub requires: Option<KernelRequirement>,
    pub hooks: &'static [Hook],
}

impl SourceHooks {
    /// Every module any variant of any hook attaches in.
    pub fn modules(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.hooks.iter().flat_map(|h| h.variants.iter()).flat_map(|v| v.modules())
    }
}

pub const IO_URING: SourceHooks = SourceHooks {
    object: "io_uring",
    requires: None,
    hooks: &[
        Hook {
            name: "io_uring:register",
            source: Source::IoUring,
            variants: &[
                Variant {
                    attach: &[
                        attach("io_uring_register_v61", "io_sqe_buffer_register", 4),
                        attach("io_uring_registered_v61", "io_sqe_buffer_register", 4),
                    ],
                },
                // 6.13-7.1 and 7.2+ differ in arity, not in what is read.
                Variant { attach: &[attach("io_uring_registered_v613", "io_sqe_buffer_register", 3)] },
                Variant { attach: &[attach("io_uring_registered_v613", "io_sqe_buffer_register", 2)] },
            ],
        },
        Hook {
            name: "io_uring:release",
            source: Source::IoUring,
            variants: &[
                // 6.12 unpins with unpin_user_folio, 6.1 with unpin_user_page.
                Variant {
                    attach: &[
                        attach("io_uring_unmap_v61", "io_buffer_unmap", 2),
                        attach("io_uring_unmapped_v61", "io_buffer_unmap", 2),
                        attach("io_uring_unpin_folio_v612", "unpin_user_folio", 2),
                        attach("io_uring_unpin_page_v61", "unpin_user_page", 1),
                    ],
                },
                Variant {
                    attach: &[
                        attach("io_uring_unmap_v61", "io_buffer_unmap", 2),
                        attach("io_uring_unmapped_v61", "io_buffer_unmap", 2),
                        attach("io_uring_unpin_page_v61", "unpin_user_page", 1),
                    ],
                },
                Variant {
                    attach: &[
                        attach("io_uring_free_node_v613", "io_free_rsrc_node", 2),
                        attach("io_uring_freed_node_v613", "io_free_rsrc_node", 2),
                        attach("io_uring_unpin_folio_v613", "unpin_user_folio", 2),
                    ],
                },
            ],
        },
    ],
};

pub const VFIO: SourceHooks = SourceHooks {
    object: "vfio",
    requires: None,
    hooks: &[
        Hook {
            name: "vfio:pin",
            source: Source::Vfio,
            variants: &[Variant {
                attach: &[
                    attach_mod("vfio_pin_v61", "vfio_iommu_type1", "vfio_pin_pages_remote", 6),
                    attach_mod("vfio_pinned_v61", "vfio_iommu_type1", "vfio_pin_pages_remote", 6),
                    attach_mod("vfio_unpin_v61", "vfio_iommu_type1", "vfio_unpin_pages_remote", 5),
                    attach_mod("vfio_unpinned_v61", "vfio_iommu_type1", "vfio_unpin_pages_remote", 5),
                ],
            }],
        },
        Hook {
            name: "vfio:release",
            source: Source::Vfio,
            variants: &[Variant { attach: &[attach_mod("vfio_remove_v61", "vfio_iommu_type1", "vfio_remove_dma", 2)] }],
        },
    ],
};

pub const IOMMUFD: SourceHooks = SourceHooks {
    object: "iommufd",
    requires: None,
    hooks: &[
        Hook {
            name: "iommufd:account",
            source: Source::Iommufd,
            variants: &[
                Variant {
                    attach: &[
                        attach_mod("iommufd_update", "iommufd", "do_update_pinned", 4),
                        attach_mod("iommufd_updated", "iommufd", "do_update_pinned", 4),
                    ],
                },
                Variant {
                    attach: &[
                        attach_mod("iommufd_update", "iommufd", "iopt_pages_update_pinned", 4),
                        attach_mod("iommufd_updated", "iommufd", "iopt_pages_update_pinned", 4),
                    ],
                },
            ],
        },
        Hook {
            name: "iommufd:release",
            source: Source::Iommufd,
            variants: &[Variant { attach: &[attach_mod("iommufd_release_v612", "iommufd", "iopt_release_pages", 1)] }],
        },
    ],
};

pub const RDMA: SourceHooks = SourceHooks {
    object: "rdma",
    requires: None,
    hooks: &[
        Hook {
            name: "rdma:register",
            source: Source::Rdma,
            variants: &[
                Variant { attach: &[attach_mod("rdma_umem_get_v61", "ib_uverbs", "ib_umem_get", 4)] },
                Variant { attach: &[attach_mod("rdma_umem_get_v72", "ib_core", "__ib_umem_get_va", 4)] },
            ],
        },
        Hook {
            name: "rdma:release",
            source: Source::Rdma,
            variants: &[
                Variant { attach: &[attach_mod("rdma_umem_release", "ib_uverbs", "ib_umem_release", 1)] },
                Variant { attach: &[attach_mod("rdma_umem_release", "ib_core", "ib_umem_release", 1)] },
            ],
        },
    ],
};

pub const XDP: SourceHooks = SourceHooks {
    object: "xdp",
    requires: None,
    hooks: &[
        Hook {
            name: "xdp:register",
            source: Source::Xdp,
            variants: &[Variant { attach: &[attach("xdp_umem_create_v61", "xdp_umem_create", 1)] }],
        },
        Hook {
            name: "xdp:release",
            source: Source::Xdp,
            variants: &[Variant {
                attach: &[
                    attach("xdp_put_umem_v61", "xdp_put_umem", 2),
                    attach("xdp_put_umem_done_v61", "xdp_put_umem", 2),
                    attach("xdp_unpin_v61", "unpin_user_pages_dirty_lock", 3),
                    attach("xdp_release_deferred_v61", "xdp_umem_release_deferred", 1),
                ],
            }],
        },
    ],
};

/// VDUSE umems, charged to `other`: the register ioctl (REG_UMEM is inlined
/// into it) and the deregistration, which gained an address-space id in 7.x.
pub const VDUSE: SourceHooks = SourceHooks {
    object: "vduse",
    requires: None,
    hooks: &[
        Hook {
            name: "vduse:register",
            source: Source::Other,
            variants: &[Variant {
                attach: &[
                    attach_mod("vduse_reg_umem", "vduse", "vduse_dev_ioctl", 3),
                    attach_mod("vduse_reg_umem_done", "vduse", "vduse_dev_ioctl", 3),
                ],
            }],
        },
        Hook {
            name: "vduse:release",
            source: Source::Other,
            variants: &[
                Variant {
                    attach: &[
                        attach_mod("vduse_dereg_v612", "vduse", "vduse_dev_dereg_umem", 3),
                        attach_mod("vduse_deregistered", "vduse", "vduse_dev_dereg_umem", 3),
                    ],
                },
                Variant {
                    attach: &[
                        attach_mod("vduse_dereg_v72", "vduse", "vduse_dev_dereg_umem", 4),
                        attach_mod("vduse_deregistered", "vduse", "vduse_dev_dereg_umem", 4),
                    ],
                },
            ],
        },
    ],
};

/// The refusal points of the budget (`src/bpf/enforce.bpf.c`): one LSM
/// program serves VFIO, iommufd, RDMA and VDUSE ioctls, a cgroup program
/// AF_XDP.
pub const ENFORCE: SourceHooks = SourceHooks {
    object: "enforce",
    requires: None,
    hooks: &[
        Hook {
            name: "vfio:refuse",
            source: Source::Vfio,
            variants: &[Variant { attach: &[attach("enforce_file_ioctl", "security_file_ioctl", 3)] }],
        },
        Hook {
            name: "iommufd:refuse",
            source: Source::Iommufd,
            variants: &[Variant { attach: &[attach("enforce_file_ioctl", "security_file_ioctl", 3)] }],
        },
        Hook {
            name: "rdma:refuse",
            source: Source::Rdma,
            variants: &[Variant { attach: &[attach("enforce_file_ioctl", "security_file_ioctl", 3)] }],
        },
        Hook {
            name: "vduse:refuse",
            source: Source::Other,
            variants: &[Variant { attach: &[attach("enforce_file_ioctl", "security_file_ioctl", 3)] }],
        },
        Hook {
            name: "xdp:refuse",
            source: Source::Xdp,
            // A cgroup program has no kernel function; it needs AF_XDP.
            variants: &[Variant { attach: &[attach("enforce_setsockopt", "xdp_umem_create", 1)] }],
        },
    ],
};

/// Refusal points on system calls, in their own object: only 7.x's verifier
/// accepts fmod_ret on `__x64_sys_*` (without error injection), and a
/// refused object must not take the ioctl refusal points down with it.
pub const ENFORCE_SYSCALL: SourceHooks = SourceHooks {
    object: "enforce_syscall",
    requires: Some(KernelRequirement {
        release: (7, 0),
        why: "kernels before 7.0 refuse fmod_ret on system calls without error injection (verified on Debian 6.1 \
              and 6.12); io_uring is enforced after the fact",
    }),
    hooks: &[Hook {
        name: "io_uring:refuse",
        source: Source::IoUring,
        variants: &[Variant { attach: &[attach("enforce_io_uring_register", "__x64_sys_io_uring_register", 1)] }],
    }],
};

/// Every object pincg can load, in load order.
pub const ALL_SOURCES: &[&SourceHooks] =
    &[&IO_URING, &VFIO, &IOMMUFD, &RDMA, &XDP, &VDUSE, &ENFORCE, &ENFORCE_SYSCALL];

/// What the kernel offers: parameter counts of its functions.
pub trait FunctionCatalog {
    /// The parameter count of `function` (in `module`'s BTF, or vmlinux's),
    /// or `None` if the kernel has no such function.
    fn params(&self, module: Option<&str>, function: &str) -> Option<usize>;

    /// Whether `module` is loaded (or built in).
    fn module_loaded(&self, module: &str) -> bool;

    /// The kernel release, (major, minor).
    fn release(&self) -> (u32, u32);

    /// Why `module` can never be loaded on this kernel (it is not built
    /// for it), or `None` if it may appear.
    fn module_absence(&self, module: &str) -> Option<String>;
}

/// The variant chosen for each hook of `source`, in hook order.
pub fn select(source: &SourceHooks, kernel: &dyn FunctionCatalog) -> Result<Vec<&'static Variant>, Error> {
    if let Some(req) = source.requires.as_ref().filter(|r| kernel.release() < r.release) {
        let (major, minor) = req.release;
        let hook = source.hooks[0].name;
        return Err(Error::HookUnavailable { hook, reason: format!("needs kernel {major}.{minor} or later: {}", req.why) });
    }
    source
        .hooks
        .iter()
        .map(|hook| {
            hook.variants
                .iter()
                .find(|v| v.fits(kernel))
                .ok_or_else(|| Error::HookUnavailable { hook: hook.name, reason: missing_reason(hook, kernel) })
        })
        .collect()
}

fn missing_reason(hook: &Hook, kernel: &dyn FunctionCatalog) -> String {
    let mut seen: Vec<String> = hook
        .variants
        .iter()
        .flat_map(|v| v.attach.iter())
        .filter(|a| kernel.params(a.module, a.function) != Some(a.params))
        .map(|a| match kernel.params(a.module, a.function) {
            Some(n) => format!("{} has {n} parameters, {} expects {}", a.function, a.program, a.params),
            None => format!("{} is not in the kernel's BTF", a.function),
        })
        .collect();
    seen.dedup();
    format!("no program variant fits this kernel ({})", seen.join("; "))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct FakeKernel(HashMap<&'static str, usize>);

    impl FunctionCatalog for FakeKernel {
        fn params(&self, _module: Option<&str>, function: &str) -> Option<usize> {
            self.0.get(function).copied()
        }

        fn module_loaded(&self, _module: &str) -> bool {
            true
        }

        fn release(&self) -> (u32, u32) {
            (6, 12)
        }

        fn module_absence(&self, _module: &str) -> Option<String> {
            None
        }
    }

    #[test]
    fn syscall_refusal_needs_7x() {
        let kernel = FakeKernel(HashMap::from([("__x64_sys_io_uring_register", 1)]));
        let err = select(&ENFORCE_SYSCALL, &kernel).unwrap_err().to_string();
        assert!(err.contains("needs kernel 7.0 or later"), "{err}");
    }

    fn programs(kernel: &FakeKernel) -> Vec<&'static str> {
        select(&IO_URING, kernel).unwrap().iter().map(|v| v.primary()).collect()
    }

    #[test]
    fn io_uring_on_6_1_and_6_12() {
        let k = FakeKernel(HashMap::from([
            ("io_sqe_buffer_register", 4),
            ("io_buffer_unmap", 2),
            ("unpin_user_page", 1),
        ]));
        let chosen = select(&IO_URING, &k).unwrap();
        assert_eq!(chosen[1].programs().last(), Some("io_uring_unpin_page_v61"));
        assert_eq!(programs(&k), ["io_uring_register_v61", "io_uring_unmap_v61"]);
        let k612 = FakeKernel(HashMap::from([
            ("io_sqe_buffer_register", 4),
            ("io_buffer_unmap", 2),
            ("unpin_user_page", 1),
            ("unpin_user_folio", 2),
        ]));
        let chosen = select(&IO_URING, &k612).unwrap();
        assert!(chosen[1].programs().any(|p| p == "io_uring_unpin_folio_v612"));
    }

    #[test]
    fn io_uring_on_6_13_and_later() {
        // 6.13-7.1 pass three parameters, 7.2 two; one program reads both.
        for arity in [3, 2] {
            let k = FakeKernel(HashMap::from([
                ("io_sqe_buffer_register", arity),
                ("io_free_rsrc_node", 2),
                ("unpin_user_folio", 2),
            ]));
            assert_eq!(programs(&k), ["io_uring_registered_v613", "io_uring_free_node_v613"]);
            assert_eq!(select(&IO_URING, &k).unwrap()[0].attach[0].params, arity);
        }
    }

    #[test]
    fn vduse_release_follows_the_address_space_parameter() {
        let chosen = |dereg_params| {
            let k = FakeKernel(HashMap::from([("vduse_dev_ioctl", 3), ("vduse_dev_dereg_umem", dereg_params)]));
            select(&VDUSE, &k).unwrap().iter().map(|v| v.primary()).collect::<Vec<_>>()
        };
        assert_eq!(chosen(3), ["vduse_reg_umem", "vduse_dereg_v612"]);
        assert_eq!(chosen(4), ["vduse_reg_umem", "vduse_dereg_v72"]);
        assert!(VDUSE.modules().all(|m| m == "vduse"));
    }

    #[test]
    fn a_missing_hook_is_named_with_what_was_seen() {
        let k = FakeKernel(HashMap::from([("io_sqe_buffer_register", 5)]));
        let err = select(&IO_URING, &k).unwrap_err().to_string();
        assert!(err.starts_with("hook io_uring:register: no program variant fits this kernel"), "{err}");
        assert!(err.contains("io_sqe_buffer_register has 5 parameters, io_uring_register_v61 expects 4"), "{err}");
    }
}
