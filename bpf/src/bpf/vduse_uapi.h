/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The part of include/uapi/linux/vduse.h that pincg reads: the umem
 * register request, shared by the ledger hook (vduse.bpf.c) and the
 * refusal point (enforce.bpf.c).
 */
#ifndef PINCG_VDUSE_UAPI_H
#define PINCG_VDUSE_UAPI_H

/* _IOW(VDUSE_BASE 0x81, 0x18, struct vduse_iova_umem): 48 bytes. */
#define VDUSE_IOTLB_REG_UMEM 0x40308118

/* struct vduse_iova_umem; `asid` is reserved[0] (must be 0) before 7.x. */
struct vduse_iova_umem_req {
	__u64 uaddr;
	__u64 iova;
	__u64 size;
	__u32 asid;
};

#endif /* PINCG_VDUSE_UAPI_H */
