// SPDX-License-Identifier: GPL-2.0-only
/*
 * The ledger's reader: one map-element iterator per map the agent and the
 * CLI read whole, each writing its entries as raw (key, value) records.
 *
 * Not a pin source: it attaches to maps, not to kernel functions. It exists
 * because a map syscall (lookup, batch lookup, update) holds the CPU's
 * bpf_prog_active for its whole walk, and the kernel skips every kprobe
 * program on that CPU meanwhile: a reader preempted there by a pinning or
 * releasing task blinds the ledger to that task's pins. An iterator runs
 * without bpf_prog_active (kernel/bpf/bpf_iter.c, bpf_iter_run_prog).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "pincg.h"
#include "ledger_maps.bpf.h"

char LICENSE[] SEC("license") = "GPL";

/* An iterator `read_<map>` over `map`, whose entries are (key_type, value_type). */
#define PINCG_MAP_READER(map, key_type, value_type)                                                \
	SEC("iter/bpf_map_elem")                                                                   \
	int read_##map(struct bpf_iter__bpf_map_elem *ctx)                                         \
	{                                                                                          \
		struct seq_file *seq = ctx->meta->seq;                                             \
		void *key = ctx->key, *value = ctx->value;                                         \
                                                                                                   \
		if (!key || !value)                                                                \
			return 0;                                                                  \
		bpf_seq_write(seq, key, sizeof(key_type));                                         \
		bpf_seq_write(seq, value, sizeof(value_type));                                     \
		return 0;                                                                          \
	}

PINCG_MAP_READER(objects, struct pin_key, struct pin_object)
PINCG_MAP_READER(usage, __u64, struct cgroup_usage)
PINCG_MAP_READER(limits, __u64, struct cgroup_limit)
PINCG_MAP_READER(counters, __u32, __u64)
PINCG_MAP_READER(actions, __u32, struct source_actions)
