// SPDX-License-Identifier: GPL-2.0-only
/*
 * RDMA memory regions: `struct ib_umem` (ib_uverbs on 6.1/6.12, ib_core on
 * 7.x). ib_umem_get pins the whole range in the registering task; the
 * release (DEREG, fd close, exit, device disassociate in a kworker) returns
 * the charge recorded for the umem. On-demand-paging and dma-buf umems pin
 * no user pages and are never charged.
 *
 * kprobes, so the modules can always be unloaded (see vfio.bpf.c).
 */
#include "ledger.bpf.h"

struct ib_umem {
	unsigned long address;
	size_t length;
	unsigned int is_odp : 1;
	unsigned int is_dmabuf : 1;
} __attribute__((preserve_access_index));

static __always_inline bool pins_user_pages(struct ib_umem *umem)
{
	return !BPF_CORE_READ_BITFIELD_PROBED(umem, is_odp) &&
	       !BPF_CORE_READ_BITFIELD_PROBED(umem, is_dmabuf);
}

static __always_inline void charge_umem(struct ib_umem *umem)
{
	__u64 addr;

	if (is_err_or_null(umem) || !pins_user_pages(umem))
		return;
	addr = BPF_CORE_READ(umem, address);
	ledger_charge_current((__u64)umem, PINCG_SRC_RDMA, addr,
			      page_span(addr, BPF_CORE_READ(umem, length)));
}

SEC("kretprobe/ib_umem_get")
int BPF_KRETPROBE(rdma_umem_get_v61, struct ib_umem *umem)
{
	charge_umem(umem);
	return 0;
}

SEC("kretprobe/__ib_umem_get_va")
int BPF_KRETPROBE(rdma_umem_get_v72, struct ib_umem *umem)
{
	charge_umem(umem);
	return 0;
}

SEC("kprobe/ib_umem_release")
int BPF_KPROBE(rdma_umem_release, struct ib_umem *umem)
{
	if (umem && pins_user_pages(umem))
		ledger_release((__u64)umem, PINCG_SRC_RDMA);
	return 0;
}
