// SPDX-License-Identifier: GPL-2.0-only
/*
 * Refusal points on system calls: io_uring_register(2) buffer registration.
 *
 * Kernels without CONFIG_FUNCTION_ERROR_INJECTION (every Debian kernel)
 * allow fmod_ret only on security_* functions, except that 7.x's verifier
 * also accepts the x86-64 syscall entry points (`__x64_sys_*`). On older
 * kernels this object is refused at load and io_uring is enforced after
 * the fact (the cgroup's action) instead; `pincg probe` says which.
 *
 * The request is read from user memory here and again by the kernel (a
 * double fetch), as at every refusal point: the ledger, charged from the
 * pin itself, stays the source of truth. 32-bit compat calls
 * (__ia32_sys_io_uring_register) are not checked.
 */
#include "ledger.bpf.h"

#define IORING_REGISTER_BUFFERS 0
#define IORING_REGISTER_BUFFERS2 15
#define IORING_REGISTER_BUFFERS_UPDATE 16
#define IORING_RSRC_REGISTER_SPARSE (1U << 0)
/* Opcode flag: `fd` is a registered ring's index, not a file descriptor. */
#define IORING_REGISTER_USE_REGISTERED_RING (1U << 31)
/* IORING_MAX_REG_BUFFERS: the kernel refuses more itself. */
#define MAX_REG_BUFFERS (1U << 14)

struct iovec_req {
	__u64 base;
	__u64 len;
};

/* struct io_uring_rsrc_register */
struct rsrc_register_req {
	__u32 nr;
	__u32 flags;
	__u64 resv2;
	__u64 data;
	__u64 tags;
};

/* struct io_uring_rsrc_update2 */
struct rsrc_update2_req {
	__u32 offset;
	__u32 resv;
	__u64 data;
	__u64 tags;
	__u32 nr;
	__u32 resv2;
};

struct iovec_walk {
	__u64 iovecs;	/* user address of the iovec array */
	__u64 bytes;	/* claimed (first pass) or new (second pass) bytes so far */
	__u64 stop;	/* first pass: a sum beyond this decides the request */
	bool count_new; /* second pass: new bytes, not claims */
};

/* bpf_loop callback: add iovec `i`; stop at an unreadable one. */
static long iovec_step(__u64 i, struct iovec_walk *w)
{
	struct iovec_req iov;

	if (bpf_copy_from_user(&iov, sizeof(iov), (void *)(w->iovecs + i * sizeof(iov))))
		return 1; /* the kernel's own copy fails the same way */
	if (w->count_new) {
		w->bytes += new_bytes(iov.base, iov.len);
		return 0;
	}
	/* The kernel refuses an iovec over 1 GiB itself: no sum can wrap. */
	w->bytes += page_span(iov.base, iov.len < (1ULL << 40) ? iov.len : (1ULL << 40));
	return w->bytes > w->stop;
}

/*
 * The bytes `nr` iovecs at `iovecs` are checked with (claim_decided): their
 * claims summed first (what the kernel reads anyway), and their new pages
 * walked only when the sum alone does not decide. A page named by two
 * iovecs of one request counts twice: the check errs towards refusing.
 */
static __always_inline __u64 iovecs_bytes(const struct level_walk *b, __u64 iovecs, __u32 nr)
{
	struct iovec_walk w = {.iovecs = iovecs};
	__u64 bytes, shared = current_pinned();

	if (!iovecs || nr > MAX_REG_BUFFERS)
		return 0;
	w.stop = b->headroom + shared < b->headroom ? ~0ULL : b->headroom + shared;
	bpf_loop(nr, iovec_step, &w, 0);
	if (claim_decided(b, w.bytes, &bytes))
		return bytes;
	w.bytes = 0;
	w.count_new = true;
	bpf_loop(nr, iovec_step, &w, 0);
	return w.bytes;
}

/* The bytes a buffer registration request is checked with, and in `*nr`
 * the buffers (pin objects) it names; 0 for others. */
static __always_inline __u64 request_bytes(const struct level_walk *b, __u32 opcode, __u64 arg,
					   __u32 nr_args, __u32 *nr)
{
	struct rsrc_register_req reg = {};
	struct rsrc_update2_req upd = {};

	switch (opcode) {
	case IORING_REGISTER_BUFFERS:
		*nr = nr_args;
		return iovecs_bytes(b, arg, nr_args);
	case IORING_REGISTER_BUFFERS2:
		if (nr_args != sizeof(reg) || bpf_copy_from_user(&reg, sizeof(reg), (void *)arg))
			return 0;
		if (reg.flags & IORING_RSRC_REGISTER_SPARSE)
			return 0;
		*nr = reg.nr;
		return iovecs_bytes(b, reg.data, reg.nr);
	case IORING_REGISTER_BUFFERS_UPDATE:
		if (nr_args != sizeof(upd) || bpf_copy_from_user(&upd, sizeof(upd), (void *)arg))
			return 0;
		*nr = upd.nr;
		return iovecs_bytes(b, upd.data, upd.nr);
	}
	return 0;
}

/*
 * The wrapper returns `long`: the program's whole 64-bit r0 becomes the
 * syscall's result, so it is written by hand rather than with BPF_PROG
 * (whose `int` a 32-bit move may return as 0xfffffff4, a success).
 */
SEC("fmod_ret.s/__x64_sys_io_uring_register")
long enforce_io_uring_register(unsigned long long *ctx)
{
	const struct pt_regs *regs = (const struct pt_regs *)ctx[0];
	long ret = (long)ctx[1];
	struct level_walk b;
	__u32 opcode, nr = 0;
	__u64 bytes;

	if (ret)
		return ret;
	/* io_uring_register(fd = di, opcode = si, arg = dx, nr_args = r10) */
	opcode = BPF_CORE_READ(regs, si) & ~IORING_REGISTER_USE_REGISTERED_RING;
	if (opcode != IORING_REGISTER_BUFFERS && opcode != IORING_REGISTER_BUFFERS2 &&
	    opcode != IORING_REGISTER_BUFFERS_UPDATE)
		return 0;
	budget_of_current(&b);
	if (!b.limited)
		return 0;
	bytes = request_bytes(&b, opcode, BPF_CORE_READ(regs, dx), BPF_CORE_READ(regs, r10), &nr);
	return bytes ? (long)admit_bytes(&b, bytes, nr, PINCG_SRC_IO_URING) : 0;
}

/* The end of io_uring_register(2): see enforce_ioctl_end. */
SEC("fexit/__x64_sys_io_uring_register")
int BPF_PROG(enforce_io_uring_register_end, const struct pt_regs *regs, long ret)
{
	request_end();
	return 0;
}
