// SPDX-License-Identifier: GPL-2.0-only
/*
 * VFIO type1 DMA mappings (module vfio_iommu_type1).
 *
 * The pin object is the `struct vfio_dma *`; its owner is `dma->task` (the
 * group leader that mapped it). A mapping is pinned chunk by chunk in
 * vfio_pin_pages_remote, which also keeps `dma->locked_vm`, the pages
 * accounted for this mapping (reserved/MMIO pfns and pages already pinned
 * by an mdev excluded). After every chunk the ledger holds exactly
 * `locked_vm` pages for the dma; vfio_remove_dma, the final teardown of a
 * mapping (UNMAP, container release, a failed MAP), returns whatever the
 * ledger holds, even when the kernel skips its own uncharge because the
 * owner's mm is gone.
 *
 * All hooks are kprobes: a kprobe does not hold a reference on the module,
 * so pincg never blocks `rmmod vfio_iommu_type1`. The loader reattaches
 * when the module comes back.
 */
#include "ledger.bpf.h"

struct vfio_dma {
	unsigned long vaddr;
	struct task_struct *task;
	size_t locked_vm;
} __attribute__((preserve_access_index));

/* The dma a task is pinning or unpinning, between entry and return. */
PINCG_INFLIGHT_MAP(vfio_busy);

static __always_inline void sync_dma(struct vfio_dma *dma, bool existing_only)
{
	__u64 bytes = BPF_CORE_READ(dma, locked_vm) * PINCG_PAGE_SIZE;

	ledger_resize((__u64)dma, PINCG_SRC_VFIO, BPF_CORE_READ(dma, task),
		      BPF_CORE_READ(dma, vaddr), bytes, existing_only);
}

SEC("kprobe/vfio_pin_pages_remote")
int BPF_KPROBE(vfio_pin_v61, struct vfio_dma *dma)
{
	inflight_set(&vfio_busy, (__u64)dma);
	return 0;
}

SEC("kretprobe/vfio_pin_pages_remote")
int BPF_KRETPROBE(vfio_pinned_v61)
{
	struct vfio_dma *dma = (struct vfio_dma *)inflight_take(&vfio_busy);

	if (dma)
		sync_dma(dma, false);
	return 0;
}

SEC("kprobe/vfio_unpin_pages_remote")
int BPF_KPROBE(vfio_unpin_v61, struct vfio_dma *dma)
{
	inflight_set(&vfio_busy, (__u64)dma);
	return 0;
}

SEC("kretprobe/vfio_unpin_pages_remote")
int BPF_KRETPROBE(vfio_unpinned_v61)
{
	struct vfio_dma *dma = (struct vfio_dma *)inflight_take(&vfio_busy);

	if (dma)
		sync_dma(dma, true);
	return 0;
}

SEC("kprobe/vfio_remove_dma")
int BPF_KPROBE(vfio_remove_v61, void *iommu, struct vfio_dma *dma)
{
	/* A mapping that never pinned (mdev-only container) has no entry. */
	ledger_release_held((__u64)dma, PINCG_SRC_VFIO);
	return 0;
}
