/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The maps every pincg BPF object shares (pinned under
 * /sys/fs/bpf/pincg/maps): the ledger's programs through ledger.bpf.h,
 * and the reader's iterators (reader.bpf.c).
 */
#ifndef PINCG_LEDGER_MAPS_BPF_H
#define PINCG_LEDGER_MAPS_BPF_H

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PINCG_MAX_OBJECTS);
	__type(key, struct pin_key);
	__type(value, struct pin_object);
} objects SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PINCG_MAX_CGROUPS);
	__type(key, __u64);
	__type(value, struct cgroup_usage);
} usage SEC(".maps");

/* Per-page pin counts of each (cgroup, process) for deduplication; entries
 * exist only while some page of their stretch is pinned. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, PINCG_MAX_SPANS);
	__type(key, struct span_key);
	__type(value, struct span_refs);
} spans SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PINCG_NR_COUNTERS);
	__type(key, __u32); /* enum pincg_counter */
	__type(value, __u64);
} counters SEC(".maps");

/* Puts the shared enums in the object's BTF, so the Rust side gets them. */
const volatile enum pincg_counter pincg_nr_counters = PINCG_NR_COUNTERS;

/* pins.max / pins.high per cgroup id; absent means no limit. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PINCG_MAX_CGROUPS);
	__type(key, __u64);
	__type(value, struct cgroup_limit);
} limits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pincg_config);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PINCG_NR_SOURCES);
	__type(key, __u32); /* enum pincg_source */
	__type(value, struct source_actions);
} actions SEC(".maps");

/* Admitted requests in flight, by pid_tgid (see struct pin_request). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PINCG_MAX_REQUESTS);
	__type(key, __u64);
	__type(value, struct pin_request);
} requests SEC(".maps");

/* Scratch space for building a pin_object (too big for the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pin_object);
} scratch SEC(".maps");

#endif
