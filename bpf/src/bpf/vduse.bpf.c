// SPDX-License-Identifier: GPL-2.0-only
/*
 * VDUSE umems (module vduse), charged to the `other` source.
 *
 * VDUSE_IOTLB_REG_UMEM pins the whole bounce range of a VDUSE device's
 * address space in the registering task (vduse_dev_reg_umem, inlined into
 * vduse_dev_ioctl: no hook of its own). The pin object is the
 * `struct vduse_umem *` the device holds afterwards: `dev->umem` on 6.12,
 * `dev->as[asid].umem` on 7.x (address spaces). Its only release is
 * vduse_dev_dereg_umem, called by the DEREG ioctl and when the device fd
 * is released (close, exit); a device can only be destroyed after that.
 *
 * The charge is read at the ioctl's return, after the device lock is
 * dropped: a DEREG racing it from another thread of the same process can
 * leave the charge behind (counted as the umem's, never lost), a slab
 * reuse of the umem then counts `stale_object`.
 *
 * kprobes, so `rmmod vduse` is never blocked (see vfio.bpf.c).
 */
#include "ledger.bpf.h"
#include "vduse_uapi.h"

struct vduse_umem {
	unsigned long npages;
} __attribute__((preserve_access_index));

/* 6.12: one address space, its umem in the device. */
struct vduse_dev___v612 {
	struct vduse_umem *umem;
} __attribute__((preserve_access_index));

/* 7.x: an array of address spaces, one umem each. */
struct vduse_as {
	struct vduse_umem *umem;
} __attribute__((preserve_access_index));

struct vduse_dev___v72 {
	struct vduse_as *as;
} __attribute__((preserve_access_index));

/* A REG_UMEM request between the ioctl's entry and its return. */
struct reg_request {
	__u64 dev;
	__u64 uaddr;
	__u32 asid;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct reg_request);
} vduse_registering SEC(".maps");

/* The umem a task is deregistering, between entry and return. */
PINCG_INFLIGHT_MAP(vduse_busy);

static __always_inline __u64 umem_of(void *dev, __u32 asid)
{
	struct vduse_dev___v612 *single = dev;
	struct vduse_dev___v72 *spaces = dev;
	struct vduse_as *as;

	if (bpf_core_field_exists(single->umem))
		return (__u64)BPF_CORE_READ(single, umem);
	as = BPF_CORE_READ(spaces, as);
	if (!as)
		return 0;
	as = (void *)as + (__u64)asid * bpf_core_type_size(struct vduse_as);
	return (__u64)BPF_CORE_READ(as, umem);
}

SEC("kprobe/vduse_dev_ioctl")
int BPF_KPROBE(vduse_reg_umem, struct file *file, unsigned int cmd, unsigned long arg)
{
	struct vduse_iova_umem_req req = {};
	struct reg_request r = {};
	__u64 tid = bpf_get_current_pid_tgid();

	if (cmd != VDUSE_IOTLB_REG_UMEM)
		return 0;
	/* The request is on the caller's stack or heap, resident: the
	 * kernel copies the same bytes right after. */
	if (bpf_probe_read_user(&req, sizeof(req), (void *)arg))
		return 0;
	r.dev = (__u64)BPF_CORE_READ(file, private_data);
	r.uaddr = req.uaddr;
	r.asid = req.asid;
	bpf_map_update_elem(&vduse_registering, &tid, &r, BPF_ANY);
	return 0;
}

SEC("kretprobe/vduse_dev_ioctl")
int BPF_KRETPROBE(vduse_reg_umem_done, long ret)
{
	__u64 tid = bpf_get_current_pid_tgid();
	struct reg_request *slot = bpf_map_lookup_elem(&vduse_registering, &tid);
	struct reg_request r;
	__u64 umem;

	if (!slot)
		return 0;
	r = *slot;
	bpf_map_delete_elem(&vduse_registering, &tid);
	if (ret)
		return 0;
	umem = umem_of((void *)r.dev, r.asid);
	if (!umem)
		return 0;
	ledger_charge_current(umem, PINCG_SRC_OTHER, r.uaddr,
			      BPF_CORE_READ((struct vduse_umem *)umem, npages) * PINCG_PAGE_SIZE);
	return 0;
}

SEC("kprobe/vduse_dev_dereg_umem")
int BPF_KPROBE(vduse_dereg_v612, void *dev)
{
	__u64 umem = umem_of(dev, 0);

	if (umem)
		inflight_set(&vduse_busy, umem);
	return 0;
}

SEC("kprobe/vduse_dev_dereg_umem")
int BPF_KPROBE(vduse_dereg_v72, void *dev, __u32 asid)
{
	__u64 umem = umem_of(dev, asid);

	if (umem)
		inflight_set(&vduse_busy, umem);
	return 0;
}

SEC("kretprobe/vduse_dev_dereg_umem")
int BPF_KRETPROBE(vduse_deregistered, int ret)
{
	__u64 umem = inflight_take(&vduse_busy);

	if (umem && !ret)
		ledger_release(umem, PINCG_SRC_OTHER);
	return 0;
}
