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
    /// An LSM program: it runs only where the BPF LSM is active.
    pub lsm: bool,
}

/// The programs that together serve a hook on one range of kernels. It
/// fits a kernel when every target function exists with its arity.
#[derive(Debug, PartialEq, Eq)]
pub struct Variant {
    pub attach: &'static [Attach],
    /// For a hook with several variants: the kernel change this one
    /// serves (the kernels it fits, and what changed), which `pincg probe`
    /// shows next to the program it chose.
    pub change: Option<&'static str>,
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
    Attach { program, function, params, module: None, lsm: false }
}

/// An LSM program on the hook whose `security_*` function is `function`.
const fn attach_lsm(program: &'static str, function: &'static str, params: usize) -> Attach {
    Attach { program, function, params, module: None, lsm: true }
}

const fn attach_mod(program: &'static str, module: &'static str, function: &'static str, params: usize) -> Attach {
    Attach { program, function, params, module: Some(module), lsm: false }
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
                    // The call is the request (no refusal point makes one):
                    // attached in reverse, its end before its start.
                    attach: &[
                        attach("io_uring_register_v61", "io_sqe_buffer_register", 4),
                        attach("io_uring_request_v61", "__x64_sys_io_uring_register", 1),
                        attach("io_uring_registered_v61", "io_sqe_buffer_register", 4),
                        attach("io_uring_request_end_v61", "__x64_sys_io_uring_register", 1),
                    ],
                    change: Some(
                        "6.1-6.12: io_sqe_buffer_register(ctx, iov, pimu, last_hpage) fills *pimu with the buffer",
                    ),
                },
                // 6.13-7.1 and 7.2+ differ in arity, not in what is read.
                Variant {
                    attach: &[attach("io_uring_registered_v613", "io_sqe_buffer_register", 3)],
                    change: Some(
                        "6.13-7.1: io_sqe_buffer_register(ctx, iov, last_hpage) returns the buffer's io_rsrc_node",
                    ),
                },
                Variant {
                    attach: &[attach("io_uring_registered_v613", "io_sqe_buffer_register", 2)],
                    change: Some(
                        "7.2: io_sqe_buffer_register(ctx, iov) returns the buffer's io_rsrc_node, last_hpage gone",
                    ),
                },
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
                    change: Some("6.12 (not 6.1): coalesced huge-page buffers are unpinned with unpin_user_folio"),
                },
                Variant {
                    attach: &[
                        attach("io_uring_unmap_v61", "io_buffer_unmap", 2),
                        attach("io_uring_unmapped_v61", "io_buffer_unmap", 2),
                        attach("io_uring_unpin_page_v61", "unpin_user_page", 1),
                    ],
                    change: Some("6.1: io_buffer_unmap unpins page by page (unpin_user_page)"),
                },
                Variant {
                    attach: &[
                        attach("io_uring_free_node_v613", "io_free_rsrc_node", 2),
                        attach("io_uring_freed_node_v613", "io_free_rsrc_node", 2),
                        attach("io_uring_unpin_folio_v613", "unpin_user_folio", 2),
                    ],
                    change: Some(
                        "6.13+: a buffer goes with its io_rsrc_node (io_free_rsrc_node), io_buffer_unmap inlined",
                    ),
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
                change: None,
            }],
        },
        Hook {
            name: "vfio:release",
            source: Source::Vfio,
            variants: &[Variant {
                attach: &[attach_mod("vfio_remove_v61", "vfio_iommu_type1", "vfio_remove_dma", 2)],
                change: None,
            }],
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
                    change: Some("6.12: iommufd accounts pinned pages in do_update_pinned"),
                },
                Variant {
                    attach: &[
                        attach_mod("iommufd_update", "iommufd", "iopt_pages_update_pinned", 4),
                        attach_mod("iommufd_updated", "iommufd", "iopt_pages_update_pinned", 4),
                    ],
                    change: Some("7.x: the accounting function is iopt_pages_update_pinned"),
                },
            ],
        },
        Hook {
            name: "iommufd:release",
            source: Source::Iommufd,
            variants: &[Variant {
                attach: &[attach_mod("iommufd_release_v612", "iommufd", "iopt_release_pages", 1)],
                change: None,
            }],
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
                Variant {
                    attach: &[attach_mod("rdma_umem_get_v61", "ib_uverbs", "ib_umem_get", 4)],
                    change: Some("6.1-7.1: MRs are pinned by ib_umem_get in ib_uverbs"),
                },
                Variant {
                    attach: &[attach_mod("rdma_umem_get_v72", "ib_core", "__ib_umem_get_va", 4)],
                    change: Some("7.2: umem moved to ib_core, MRs pinned by __ib_umem_get_va"),
                },
            ],
        },
        Hook {
            name: "rdma:release",
            source: Source::Rdma,
            variants: &[
                Variant {
                    attach: &[attach_mod("rdma_umem_release", "ib_uverbs", "ib_umem_release", 1)],
                    change: Some("6.1-7.1: ib_umem_release in ib_uverbs"),
                },
                Variant {
                    attach: &[attach_mod("rdma_umem_release", "ib_core", "ib_umem_release", 1)],
                    change: Some("7.2: ib_umem_release in ib_core"),
                },
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
            variants: &[Variant { attach: &[attach("xdp_umem_create_v61", "xdp_umem_create", 1)], change: None }],
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
                change: None,
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
                change: None,
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
                    change: Some("6.12: vduse_dev_dereg_umem(dev, iova, size), the umem at dev->umem"),
                },
                Variant {
                    attach: &[
                        attach_mod("vduse_dereg_v72", "vduse", "vduse_dev_dereg_umem", 4),
                        attach_mod("vduse_deregistered", "vduse", "vduse_dev_dereg_umem", 4),
                    ],
                    change: Some("7.x: address spaces: vduse_dev_dereg_umem(dev, asid, iova, size), the umem at dev->as[asid].umem"),
                },
            ],
        },
    ],
};

/// The ioctl refusal point and the end of the ioctl, which returns what an
/// admitted request reserved and did not pin.
const IOCTL_REFUSAL: Variant = Variant {
    attach: &[
        attach_lsm("enforce_file_ioctl", "security_file_ioctl", 3),
        attach("enforce_ioctl_end", "__x64_sys_ioctl", 1),
    ],
    change: None,
};

/// The refusal points of the budget (`src/bpf/enforce.bpf.c`): one LSM
/// program serves VFIO, iommufd, RDMA and VDUSE ioctls, a cgroup program
/// AF_XDP.
pub const ENFORCE: SourceHooks = SourceHooks {
    object: "enforce",
    requires: None,
    hooks: &[
        Hook { name: "vfio:refuse", source: Source::Vfio, variants: &[IOCTL_REFUSAL] },
        Hook { name: "iommufd:refuse", source: Source::Iommufd, variants: &[IOCTL_REFUSAL] },
        Hook { name: "rdma:refuse", source: Source::Rdma, variants: &[IOCTL_REFUSAL] },
        Hook { name: "vduse:refuse", source: Source::Other, variants: &[IOCTL_REFUSAL] },
        Hook {
            name: "xdp:refuse",
            source: Source::Xdp,
            // A cgroup program has no kernel function; it needs AF_XDP.
            variants: &[Variant {
                attach: &[
                    attach("enforce_setsockopt", "xdp_umem_create", 1),
                    attach("enforce_setsockopt_end", "__x64_sys_setsockopt", 1),
                ],
                change: None,
            }],
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
        variants: &[Variant {
            attach: &[
                attach("enforce_io_uring_register", "__x64_sys_io_uring_register", 1),
                // The end of the call returns what the request reserved and did not pin.
                attach("enforce_io_uring_register_end", "__x64_sys_io_uring_register", 1),
            ],
            change: None,
        }],
    }],
};

/// Every object pincg can load, in load order.
pub const ALL_SOURCES: &[&SourceHooks] = &[&IO_URING, &VFIO, &IOMMUFD, &RDMA, &XDP, &VDUSE, &ENFORCE, &ENFORCE_SYSCALL];

/// Whether hook `name` is served by an LSM program.
pub fn runs_as_lsm(name: &str) -> bool {
    ALL_SOURCES
        .iter()
        .flat_map(|s| s.hooks.iter())
        .filter(|h| h.name == name)
        .flat_map(|h| h.variants.iter())
        .any(|v| v.attach.iter().any(|a| a.lsm))
}

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
        return Err(Error::HookUnavailable {
            hook,
            reason: format!("needs kernel {major}.{minor} or later: {}", req.why),
        });
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

    /// A hook with several variants says, for each, which kernel change it
    /// serves (`pincg probe` shows it); a hook with one needs none.
    #[test]
    fn every_variant_of_a_changed_hook_names_its_kernel_change() {
        for hook in ALL_SOURCES.iter().flat_map(|s| s.hooks.iter()) {
            for v in hook.variants {
                let several = hook.variants.len() > 1;
                assert_eq!(v.change.is_some(), several, "{}: variant {}", hook.name, v.primary());
            }
        }
    }

    /// `loader::attach` attaches a source's programs in reverse of their
    /// listing: its release hooks, listed last, attach first, so no pin is
    /// charged while its release could go unseen (nothing leaks across an
    /// attach or a module reload).
    #[test]
    fn every_source_lists_its_release_hooks_last() {
        for source in ALL_SOURCES {
            let names: Vec<&str> = source.hooks.iter().map(|h| h.name).collect();
            if let Some(first) = names.iter().position(|n| n.ends_with(":release")) {
                assert!(names[first..].iter().all(|n| n.ends_with(":release")), "{}: {names:?}", source.object);
            }
        }
    }

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
            ("__x64_sys_io_uring_register", 1),
            ("io_buffer_unmap", 2),
            ("unpin_user_page", 1),
        ]));
        let chosen = select(&IO_URING, &k).unwrap();
        assert_eq!(chosen[1].programs().last(), Some("io_uring_unpin_page_v61"));
        assert_eq!(programs(&k), ["io_uring_register_v61", "io_uring_unmap_v61"]);
        // The system call's end attaches before its start (no request left open).
        let order: Vec<&str> = chosen[0].programs().collect();
        let at = |p: &str| order.iter().position(|q| *q == p).unwrap();
        assert!(at("io_uring_request_end_v61") > at("io_uring_request_v61"), "{order:?}");
        let k612 = FakeKernel(HashMap::from([
            ("io_sqe_buffer_register", 4),
            ("__x64_sys_io_uring_register", 1),
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
