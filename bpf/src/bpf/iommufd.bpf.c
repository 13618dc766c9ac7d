// SPDX-License-Identifier: GPL-2.0-only
/*
 * iommufd IOAS maps (IOMMU_IOAS_MAP/MAP_FILE/COPY, and the vfio-compat
 * container), in iommufd.ko or built in.
 *
 * The pin object is the `struct iopt_pages *`: one per mapped user range,
 * shared by every area and IOAS that maps it (IOAS_COPY adds an area, not
 * pins). Its owner is `pages->source_task`. Every change of what is pinned
 * goes through one accounting sink, for every account mode including the
 * CAP_IPC_LOCK "none" mode: do_update_pinned (6.12) /
 * iopt_pages_update_pinned (7.x), after which `pages->last_npinned` is the
 * number of pages pinned. The ledger follows it; iopt_release_pages, the
 * final free, returns whatever is left.
 */
#include "ledger.bpf.h"

struct iopt_pages {
	struct kref kref;
	size_t last_npinned;
	struct task_struct *source_task;
	void *uptr;
} __attribute__((preserve_access_index));

/* The iopt_pages a task is accounting, between entry and return. */
PINCG_INFLIGHT_MAP(iommufd_busy);

static __always_inline void accounted(int ret)
{
	struct iopt_pages *pages = (struct iopt_pages *)inflight_take(&iommufd_busy);

	if (!pages || ret)
		return;
	ledger_resize((__u64)pages, PINCG_SRC_IOMMUFD, BPF_CORE_READ(pages, source_task),
		      (__u64)BPF_CORE_READ(pages, uptr),
		      BPF_CORE_READ(pages, last_npinned) * PINCG_PAGE_SIZE, false);
}

/* Attached to do_update_pinned (6.12) or iopt_pages_update_pinned (7.x),
 * which take the same first argument: the loader names the function. */
SEC("kprobe")
int BPF_KPROBE(iommufd_update, struct iopt_pages *pages)
{
	inflight_set(&iommufd_busy, (__u64)pages);
	return 0;
}

SEC("kretprobe")
int BPF_KRETPROBE(iommufd_updated, int ret)
{
	accounted(ret);
	return 0;
}

SEC("kprobe/iopt_release_pages")
int BPF_KPROBE(iommufd_release_v612, struct kref *kref)
{
	__u64 pages = (__u64)kref - bpf_core_field_offset(struct iopt_pages, kref);

	/* Pages never accounted (no domain filled) have no entry. */
	ledger_release_held(pages, PINCG_SRC_IOMMUFD);
	return 0;
}
