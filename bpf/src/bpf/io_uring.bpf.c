// SPDX-License-Identifier: GPL-2.0-only
/*
 * io_uring registered buffers (IORING_REGISTER_BUFFERS, BUFFERS2,
 * BUFFERS_UPDATE, CLONE_BUFFERS, UNREGISTER, ring teardown).
 *
 * The pin object is the `struct io_mapped_ubuf *`. Registration always runs
 * in the io_uring_register(2) caller, so the charge goes to the current
 * task's cgroup. Release runs wherever the last reference drops (the
 * syscall, task_work, or the iou_exit kworker at ring teardown) and returns
 * the charge to the cgroup recorded in the ledger.
 *
 * Program variants; the loader picks them from the kernel's BTF:
 *   v61: 6.1 .. 6.12  io_sqe_buffer_register(ctx, iov, pimu, last_hpage)
 *                     (kprobe + kretprobe), io_buffer_unmap(ctx, slot)
 *   v613: 6.13 .. 7.1 io_sqe_buffer_register(ctx, iov, last_hpage) -> node
 *   v72: 7.2+         io_sqe_buffer_register(ctx, iov) -> io_rsrc_node *
 *   6.13+ release in  io_free_rsrc_node(ctx, node), unpinning with
 *                     unpin_user_folio
 */
#include "ledger.bpf.h"

/* 6.1: the range is [ubuf, ubuf_end); no refcount (no clones). */
struct io_mapped_ubuf___v61 {
	__u64 ubuf;
	__u64 ubuf_end;
} __attribute__((preserve_access_index));

/* 6.12+: `len` is 32 bits on 6.12 and size_t on 7.x; `refs` counts clones. */
struct io_mapped_ubuf___v612 {
	__u64 ubuf;
	unsigned int len;
	refcount_t refs;
} __attribute__((preserve_access_index));

/* 7.x: the buffer table holds rsrc nodes. */
struct io_rsrc_node___v72 {
	unsigned char type;
	struct io_mapped_ubuf___v612 *buf;
} __attribute__((preserve_access_index));

/* Kernel-owned bvecs (no user pages pinned): `is_kbuf` before 7.2, a flag after. */
struct io_mapped_ubuf___v72 {
	__u8 flags;
	bool is_kbuf;
} __attribute__((preserve_access_index));

#define IORING_RSRC_BUFFER 1
#define IO_REGBUF_F_KBUF 1
/* The shared placeholder of sparse slots has an invalid range start. */
#define DUMMY_UBUF_START (~0ULL)

/* Start address and page-granular pinned bytes of a registered buffer. */
static __always_inline __u64 imu_span(void *imu, __u64 *start)
{
	struct io_mapped_ubuf___v61 *v61 = imu;
	struct io_mapped_ubuf___v612 *v612 = imu;
	__u64 len;

	*start = BPF_CORE_READ(v612, ubuf);
	if (bpf_core_field_exists(v61->ubuf_end))
		len = BPF_CORE_READ(v61, ubuf_end) - *start;
	else
		len = BPF_CORE_READ_BITFIELD_PROBED(v612, len);
	if (*start == DUMMY_UBUF_START)
		return 0;
	return page_span(*start, len);
}

static __always_inline void charge_imu(void *imu)
{
	__u64 start = 0, bytes;

	if (!imu)
		return;
	bytes = imu_span(imu, &start);
	ledger_charge_current((__u64)imu, PINCG_SRC_IO_URING, start, bytes);
}

/*
 * 6.1/6.12 pass the buffer back through `struct io_mapped_ubuf **pimu`, and
 * release takes a `**slot`: the verifier refuses pointer-to-pointer
 * arguments of fentry/fexit programs on these kernels, so these variants
 * are kprobes. Registration is rare, not a hot path.
 */
/* The registering task's pimu. */
PINCG_INFLIGHT_MAP(registering);

SEC("kprobe/io_sqe_buffer_register")
int BPF_KPROBE(io_uring_register_v61, void *ring, struct iovec *iov, void **pimu)
{
	inflight_set(&registering, (__u64)pimu);
	return 0;
}

SEC("kretprobe/io_sqe_buffer_register")
int BPF_KRETPROBE(io_uring_registered_v61, int ret)
{
	__u64 pimu = inflight_take(&registering);
	void *imu = NULL;

	if (!pimu || ret)
		return 0;
	bpf_probe_read_kernel(&imu, sizeof(imu), (void *)pimu);
	charge_imu(imu);
	return 0;
}

/*
 * 6.1/6.12 have no refusal point for io_uring: one io_uring_register call
 * (BUFFERS, BUFFERS2, BUFFERS_UPDATE: many buffers) is made one request
 * here, so its buffers over a limit count one `max` event and one overrun,
 * and its kill action is sent once.
 */
SEC("kprobe/__x64_sys_io_uring_register")
int BPF_KPROBE(io_uring_request_v61)
{
	request_open();
	return 0;
}

SEC("kretprobe/__x64_sys_io_uring_register")
int BPF_KRETPROBE(io_uring_request_end_v61)
{
	request_end();
	return 0;
}

/*
 * Release: io_buffer_unmap (6.1/6.12) or io_free_rsrc_node (6.13+) drops one
 * reference; only the put of
 * the last reference (clones share the buffer) goes on to unpin the pages.
 * Reading the refcount at entry would race with a concurrent put from a
 * cloned ring, so the release is recorded when this task actually unpins
 * inside io_buffer_unmap.
 */
/* The io_mapped_ubuf the task is releasing. */
PINCG_INFLIGHT_MAP(unmapping);

SEC("kprobe/io_buffer_unmap")
int BPF_KPROBE(io_uring_unmap_v61, void *ring, void **slot)
{
	__u64 start = 0;
	void *imu = NULL;

	bpf_probe_read_kernel(&imu, sizeof(imu), slot);
	if (imu && imu_span(imu, &start))
		inflight_set(&unmapping, (__u64)imu);
	return 0;
}

SEC("kretprobe/io_buffer_unmap")
int BPF_KRETPROBE(io_uring_unmapped_v61)
{
	inflight_take(&unmapping);
	return 0;
}

/* The first unpin inside io_buffer_unmap: this put was the last one. */
static __always_inline void unpinning(void)
{
	__u64 imu;

	if (!inflight_any())
		return;
	imu = inflight_take(&unmapping);
	if (imu)
		ledger_release(imu, PINCG_SRC_IO_URING);
}

SEC("fentry/unpin_user_folio")
int BPF_PROG(io_uring_unpin_folio_v612)
{
	unpinning();
	return 0;
}

SEC("fentry/unpin_user_page")
int BPF_PROG(io_uring_unpin_page_v61)
{
	unpinning();
	return 0;
}

/* The 6.13+ witness, a kprobe for the reason given at io_uring_registered_v613. */
SEC("kprobe/unpin_user_folio")
int BPF_KPROBE(io_uring_unpin_folio_v613)
{
	unpinning();
	return 0;
}

static __always_inline void charge_node(struct io_rsrc_node___v72 *node)
{
	if (!is_err_or_null(node))
		charge_imu(BPF_CORE_READ(node, buf));
}

/*
 * 6.13+ return the buffer's node. On these kernels (7.x is fully
 * preemptible) a fentry/fexit program can be preempted, and another task
 * entering the same program on that CPU is then skipped (a recursion miss:
 * a lost charge); kprobe programs run with preemption off, so the 6.13+
 * variants are kprobes too.
 */
SEC("kretprobe/io_sqe_buffer_register")
int BPF_KRETPROBE(io_uring_registered_v613, struct io_rsrc_node___v72 *node)
{
	charge_node(node);
	return 0;
}

static __always_inline bool kernel_buffer(struct io_mapped_ubuf___v72 *imu)
{
	if (bpf_core_field_exists(imu->flags))
		return BPF_CORE_READ(imu, flags) & IO_REGBUF_F_KBUF;
	if (bpf_core_field_exists(imu->is_kbuf))
		return BPF_CORE_READ(imu, is_kbuf);
	return false;
}

SEC("kprobe/io_free_rsrc_node")
int BPF_KPROBE(io_uring_free_node_v613, void *ring, struct io_rsrc_node___v72 *node)
{
	struct io_mapped_ubuf___v72 *imu;

	if (BPF_CORE_READ(node, type) != IORING_RSRC_BUFFER)
		return 0;
	imu = (void *)BPF_CORE_READ(node, buf);
	if (imu && !kernel_buffer(imu))
		inflight_set(&unmapping, (__u64)imu);
	return 0;
}

SEC("kretprobe/io_free_rsrc_node")
int BPF_KRETPROBE(io_uring_freed_node_v613)
{
	inflight_take(&unmapping);
	return 0;
}
