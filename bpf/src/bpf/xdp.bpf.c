// SPDX-License-Identifier: GPL-2.0-only
/*
 * AF_XDP umems (setsockopt XDP_UMEM_REG), in vmlinux.
 *
 * xdp_umem_create pins the whole umem in the registering task. The umem is
 * refcounted by the sockets sharing it; only the last put releases it,
 * either right away (xdp_put_umem unpins inside the call) or deferred to a
 * kworker (xdp_umem_release_deferred). Both are recorded when the pages are
 * actually unpinned or the deferred release runs, never by reading the
 * refcount, so concurrent puts cannot leak the charge.
 */
#include "ledger.bpf.h"

struct xdp_umem___pincg {
	__u32 npgs;
	struct work_struct work;
} __attribute__((preserve_access_index));

struct xdp_umem_reg___pincg {
	__u64 addr;
} __attribute__((preserve_access_index));

/* The umem a task is putting, between entry and return of xdp_put_umem. */
PINCG_INFLIGHT_MAP(xdp_putting);

SEC("fexit/xdp_umem_create")
int BPF_PROG(xdp_umem_create_v61, struct xdp_umem_reg___pincg *mr, struct xdp_umem___pincg *umem)
{
	if (is_err_or_null(umem))
		return 0;
	ledger_charge_current((__u64)umem, PINCG_SRC_XDP, BPF_CORE_READ(mr, addr),
			      (__u64)BPF_CORE_READ(umem, npgs) * PINCG_PAGE_SIZE);
	return 0;
}

SEC("fentry/xdp_put_umem")
int BPF_PROG(xdp_put_umem_v61, struct xdp_umem___pincg *umem)
{
	if (umem)
		inflight_set(&xdp_putting, (__u64)umem);
	return 0;
}

SEC("fexit/xdp_put_umem")
int BPF_PROG(xdp_put_umem_done_v61)
{
	inflight_take(&xdp_putting);
	return 0;
}

/* The last put unpins the umem's pages inside xdp_put_umem. */
SEC("fentry/unpin_user_pages_dirty_lock")
int BPF_PROG(xdp_unpin_v61)
{
	__u64 umem;

	if (!inflight_any())
		return 0;
	umem = inflight_take(&xdp_putting);

	if (umem)
		ledger_release(umem, PINCG_SRC_XDP);
	return 0;
}

SEC("fentry/xdp_umem_release_deferred")
int BPF_PROG(xdp_release_deferred_v61, struct work_struct *work)
{
	__u64 umem = (__u64)work - bpf_core_field_offset(struct xdp_umem___pincg, work);

	ledger_release(umem, PINCG_SRC_XDP);
	return 0;
}
