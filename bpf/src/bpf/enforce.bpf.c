// SPDX-License-Identifier: GPL-2.0-only
/*
 * Refusal points: requests that would take the caller's cgroup (or an
 * ancestor) over pins.max fail with ENOMEM before a single page is pinned,
 * decided here without a round trip to the agent.
 *
 *   lsm.s/file_ioctl   VFIO_IOMMU_MAP_DMA; IOMMU_IOAS_MAP; RDMA REG_MR sent
 *                      as an ioctl (rdma-core's ibv_reg_mr:
 *                      UVERBS_METHOD_INVOKE_WRITE); VDUSE_IOTLB_REG_UMEM
 *                      (source `other`). IOMMU_IOAS_COPY maps pages
 *                      already pinned and is not checked.
 *   cgroup/setsockopt  AF_XDP XDP_UMEM_REG
 *
 * An admitted request reserves its bytes until its system call ends (see
 * "Admission" in ledger.bpf.h).
 *
 * Every check reads the request from user memory, which the caller can
 * change before the kernel reads it again (a double fetch): the ledger,
 * charged from the pin itself, stays the source of truth and an overrun
 * that slips through applies the cgroup's action (see overrun()).
 */
#include "ledger.bpf.h"
#include "vduse_uapi.h"

#define VFIO_IOMMU_MAP_DMA 0x3b71
#define VFIO_DMA_MAP_FLAG_VADDR (1 << 2)

struct vfio_dma_map_req {
	__u32 argsz;
	__u32 flags;
	__u64 vaddr;
	__u64 iova;
	__u64 size;
};

#define IOMMU_IOAS_MAP 0x3b85

struct iommu_ioas_map_req {
	__u32 size;
	__u32 flags;
	__u32 ioas_id;
	__u32 reserved;
	__u64 user_va;
	__u64 length;
	__u64 iova;
};

#define RDMA_VERBS_IOCTL 0xc0181b01
#define UVERBS_OBJECT_DEVICE 0
#define UVERBS_METHOD_INVOKE_WRITE 0
#define UVERBS_ATTR_CORE_IN 0
#define UVERBS_ATTR_WRITE_CMD 2
#define IB_USER_VERBS_CMD_REG_MR 9
#define MAX_UVERBS_ATTRS 16

struct uverbs_ioctl_hdr {
	__u16 length;
	__u16 object_id;
	__u16 method_id;
	__u16 num_attrs;
	__u64 reserved1;
	__u32 driver_id;
	__u32 reserved2;
};

struct uverbs_attr {
	__u16 attr_id;
	__u16 len;
	__u16 flags;
	__u16 attr_data;
	__u64 data; /* inline value when len <= 8, else a user pointer */
};

/* struct ib_uverbs_reg_mr, the command body CORE_IN points to. */
struct uverbs_reg_mr {
	__u64 response;
	__u64 start;
	__u64 length;
	__u64 hca_va;
};

#define SOL_XDP 283
#define XDP_UMEM_REG 4

struct xdp_umem_reg_req {
	__u64 addr;
	__u64 len;
};

static __always_inline int vfio_map_dma(unsigned long arg)
{
	struct vfio_dma_map_req req = {};

	if (bpf_copy_from_user(&req, sizeof(req), (void *)arg))
		return 0; /* the kernel's own copy will fail the same way */
	if (req.flags & VFIO_DMA_MAP_FLAG_VADDR)
		return 0; /* re-points an existing mapping: nothing new pinned */
	return admit(req.vaddr, req.size, PINCG_SRC_VFIO);
}

static __always_inline int iommufd_ioas_map(unsigned long arg)
{
	struct iommu_ioas_map_req req = {};

	if (bpf_copy_from_user(&req, sizeof(req), (void *)arg))
		return 0;
	return admit(req.user_va, req.length, PINCG_SRC_IOMMUFD);
}

static __always_inline int vduse_reg_umem(unsigned long arg)
{
	struct vduse_iova_umem_req req = {};

	if (bpf_copy_from_user(&req, sizeof(req), (void *)arg))
		return 0;
	return admit(req.uaddr, req.size, PINCG_SRC_OTHER);
}

/* Admit an INVOKE_WRITE(REG_MR) request; any other request passes. */
static __always_inline int rdma_reg_mr(unsigned long arg)
{
	struct uverbs_ioctl_hdr hdr = {};
	struct uverbs_reg_mr cmd = {};
	__u64 core_in = 0;
	bool reg_mr = false, write_cmd = false;

	if (bpf_copy_from_user(&hdr, sizeof(hdr), (void *)arg))
		return 0;
	if (hdr.object_id != UVERBS_OBJECT_DEVICE || hdr.method_id != UVERBS_METHOD_INVOKE_WRITE)
		return 0;
	for (int i = 0; i < MAX_UVERBS_ATTRS; i++) {
		struct uverbs_attr attr = {};

		if (i >= hdr.num_attrs)
			break;
		if (bpf_copy_from_user(&attr, sizeof(attr),
				       (void *)(arg + sizeof(hdr) + i * sizeof(attr))))
			return 0;
		if (attr.attr_id == UVERBS_ATTR_WRITE_CMD) {
			write_cmd = true;
			reg_mr = attr.data == IB_USER_VERBS_CMD_REG_MR;
		} else if (attr.attr_id == UVERBS_ATTR_CORE_IN && attr.len >= sizeof(cmd))
			core_in = attr.data;
	}
	/* Padding past the attributes read could hide the command or a
	 * REG_MR's body: such a request (rdma-core sends five attributes at
	 * most) is a claim of everything. */
	if (hdr.num_attrs > MAX_UVERBS_ATTRS && (!write_cmd || (reg_mr && !core_in)))
		return admit_everything(PINCG_SRC_RDMA);
	if (!reg_mr || !core_in || bpf_copy_from_user(&cmd, sizeof(cmd), (void *)core_in))
		return 0;
	return admit(cmd.start, cmd.length, PINCG_SRC_RDMA);
}

SEC("lsm.s/file_ioctl")
int BPF_PROG(enforce_file_ioctl, struct file *file, unsigned int cmd, unsigned long arg, int ret)
{
	if (ret)
		return ret;
	if (cmd == VFIO_IOMMU_MAP_DMA)
		return vfio_map_dma(arg);
	if (cmd == IOMMU_IOAS_MAP)
		return iommufd_ioas_map(arg);
	if (cmd == VDUSE_IOTLB_REG_UMEM)
		return vduse_reg_umem(arg);
	if (cmd == RDMA_VERBS_IOCTL)
		return rdma_reg_mr(arg);
	return 0;
}

/*
 * The end of the system calls whose requests the programs above admit:
 * what an admitted request reserved and did not pin (the kernel failed it,
 * or it pinned fewer new pages) is returned. Every ioctl on the node comes
 * through here; with no request in flight it is one load.
 */
SEC("fexit/__x64_sys_ioctl")
int BPF_PROG(enforce_ioctl_end, const struct pt_regs *regs, long ret)
{
	request_end();
	return 0;
}

SEC("fexit/__x64_sys_setsockopt")
int BPF_PROG(enforce_setsockopt_end, const struct pt_regs *regs, long ret)
{
	request_end();
	return 0;
}

SEC("cgroup/setsockopt")
int enforce_setsockopt(struct bpf_sockopt *ctx)
{
	struct xdp_umem_reg_req *req = ctx->optval;

	if (ctx->level != SOL_XDP || ctx->optname != XDP_UMEM_REG)
		return 1;
	if ((void *)(req + 1) > ctx->optval_end)
		return 1;
	if (admit(req->addr, req->len, PINCG_SRC_XDP)) {
		bpf_set_retval(-12 /* -ENOMEM */);
		return 0;
	}
	return 1;
}
