/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The ledger: one entry per live long-term pin object, recording the cgroup
 * charged at pin time, and per-cgroup usage kept hierarchically.
 *
 * Every BPF object of pincg includes this header; the loader pins the maps
 * under /sys/fs/bpf/pincg/maps so all objects (and restarted agents) share
 * one ledger.
 */
#ifndef PINCG_LEDGER_BPF_H
#define PINCG_LEDGER_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "pincg.h"

char LICENSE[] SEC("license") = "GPL";

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
	__type(key, __u32);	/* enum pincg_counter */
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
	__type(key, __u32);	/* enum pincg_source */
	__type(value, struct source_actions);
} actions SEC(".maps");

/* Scratch space for building a pin_object (too big for the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pin_object);
} scratch SEC(".maps");

static __always_inline void count(enum pincg_counter which)
{
	__u32 key = which;
	__u64 *slot = bpf_map_lookup_elem(&counters, &key);

	if (slot)
		__sync_fetch_and_add(slot, 1);
}

/* x86_64 pages: what the pages counted by subsystems (npgs, locked_vm) are. */
#define PINCG_PAGE_SIZE 4096ULL

/* Bytes of whole pages covering [addr, addr + len). */
static __always_inline __u64 page_span(__u64 addr, __u64 len)
{
	const __u64 page = PINCG_PAGE_SIZE;

	if (!len)
		return 0;
	return ((addr + len + page - 1) & ~(page - 1)) - (addr & ~(page - 1));
}

enum span_op {
	SPAN_COUNT_NEW,	/* count pages no object covers yet; change nothing */
	SPAN_ADD,	/* one more object covers the pages */
	SPAN_REMOVE,	/* one object less covers the pages */
};

/* A walk over user pages [first, end) of one process charged to one cgroup. */
struct span_walk {
	struct span_key key;
	__u64 first;
	__u64 end;
	__u64 changed;	/* pages that were uncovered (COUNT_NEW, ADD) or now are (REMOVE) */
	__u32 op;
};

/*
 * The per-page loops below are branch-free (1 = true, 0 = false, from the
 * sign bit of a difference): every page of an entry takes the same path, so
 * the verifier walks one path per page rather than every combination.
 */
static __always_inline __u64 is_zero(__u64 v)
{
	return (v - 1) >> 63;	/* v < 2^32 here */
}

/* Whether page j lies in [lo, hi), all three in [0, PINCG_SPAN_PAGES]. */
static __always_inline __u64 in_range(__u64 j, __u64 lo, __u64 hi)
{
	__u64 d = j - lo;

	return (~d >> 63) & ((d - (hi - lo)) >> 63);
}

/* One `spans` entry of a walk: bpf_loop callback, step `i`. */
static long span_step(__u64 i, struct span_walk *w)
{
	static const struct span_refs none;
	__u64 index = w->first / PINCG_SPAN_PAGES + i;
	__u64 base = index * PINCG_SPAN_PAGES;
	__u64 lo = w->first > base ? w->first - base : 0;
	__u64 hi = w->end - base < PINCG_SPAN_PAGES ? w->end - base : PINCG_SPAN_PAGES;
	struct span_refs *r;
	__u64 changed = 0, live = 0;

	w->key.index = index;
	r = bpf_map_lookup_elem(&spans, &w->key);
	if (!r && w->op == SPAN_ADD) {
		bpf_map_update_elem(&spans, &w->key, &none, BPF_NOEXIST);
		r = bpf_map_lookup_elem(&spans, &w->key);
		if (!r)
			count(PINCG_CNT_SPANS_FULL);
	}
	if (!r) {
		/* No page of this stretch is covered (or, for a release, its
		 * entry could not be made and the pages were counted as new). */
		w->changed += hi - lo;
		return 0;
	}
	if (w->op == SPAN_COUNT_NEW) {
		for (__u32 j = 0; j < PINCG_SPAN_PAGES; j++)
			changed += in_range(j, lo, hi) & is_zero(r->refs[j]);
	} else if (w->op == SPAN_ADD) {
		for (__u32 j = 0; j < PINCG_SPAN_PAGES; j++) {
			__u32 in = in_range(j, lo, hi);

			changed += in & is_zero(__sync_fetch_and_add(&r->refs[j], in));
		}
	} else {
		for (__u32 j = 0; j < PINCG_SPAN_PAGES; j++) {
			/* A page no object covers is left at 0 (a release the
			 * ledger cannot match is not taken twice). */
			__u32 out = in_range(j, lo, hi) & (1 - is_zero(r->refs[j]));
			__u64 old = __sync_fetch_and_add(&r->refs[j], -out);

			changed += out & is_zero(old - 1);
			live |= old - out;
		}
		if (!live)
			bpf_map_delete_elem(&spans, &w->key);
	}
	w->changed += changed;
	return 0;
}

/*
 * Walk the pages of [addr, addr + bytes) (page-granular, `addr` rounded
 * down) that `tgid` pinned under `cgroup`; returns the bytes that changed
 * coverage (see span_walk.changed).
 */
static __always_inline __u64 span_walk(__u64 cgroup, __u32 tgid, __u64 addr, __u64 bytes, __u32 op)
{
	struct span_walk w = { .key = { .cgroup = cgroup, .tgid = tgid }, .op = op };
	__u64 nr;

	if (bytes < PINCG_PAGE_SIZE)
		return 0;
	w.first = addr / PINCG_PAGE_SIZE;
	w.end = w.first + bytes / PINCG_PAGE_SIZE;
	nr = (w.end - 1) / PINCG_SPAN_PAGES - w.first / PINCG_SPAN_PAGES + 1;
	if (bpf_loop(nr, span_step, &w, 0) < 0)
		return bytes;	/* beyond bpf_loop's 2^23 steps (4 TiB): all new */
	return w.changed * PINCG_PAGE_SIZE;
}

static __always_inline struct cgroup_usage *usage_of(__u64 cgroup)
{
	static const struct cgroup_usage zero;
	struct cgroup_usage *u = bpf_map_lookup_elem(&usage, &cgroup);

	if (u)
		return u;
	/* BPF_NOEXIST: a concurrent creator wins and we use its entry. */
	bpf_map_update_elem(&usage, &cgroup, &zero, BPF_NOEXIST);
	u = bpf_map_lookup_elem(&usage, &cgroup);
	if (!u)
		count(PINCG_CNT_USAGE_FULL);
	return u;
}

static __always_inline bool enforcing(void)
{
	__u32 zero = 0;
	struct pincg_config *cfg = bpf_map_lookup_elem(&settings, &zero);

	return cfg && cfg->mode == PINCG_MODE_ENFORCE;
}

static __always_inline struct source_actions *actions_of(__u32 source)
{
	__u32 slot = source;

	return bpf_map_lookup_elem(&actions, &slot);
}

/*
 * A charge raised `cgroup`'s usage to `after`: peak, a pins.high crossing,
 * and whether it is now over its pins.max (a `max` event). Returns the
 * action the cgroup's limit asks for, or -1 if it is within its max.
 */
static __always_inline int raised(__u64 cgroup, struct cgroup_usage *u, __u64 after, __u64 delta)
{
	struct cgroup_limit *lim = bpf_map_lookup_elem(&limits, &cgroup);

	if (after > u->peak)
		u->peak = after;	/* racy by design: peak is a watermark */
	if (!lim)
		return -1;
	if (after - delta <= lim->high && after > lim->high)
		__sync_fetch_and_add(&u->events_high, 1);
	if (after <= lim->max)
		return -1;
	__sync_fetch_and_add(&u->events_max, 1);
	return lim->action;
}

/*
 * A charge took at least one cgroup over its pins.max where nothing refused
 * it: count the overrun and, in enforce mode, apply the strictest action
 * (kill: SIGKILL to the pinning task, which is current in every charge
 * hook). Freeze is applied by the agent, which sees the overrun.
 */
static __always_inline void overrun(const struct pin_object *obj, __u32 source, bool kill)
{
	struct source_actions *acts = actions_of(source);

	if (!acts)
		return;
	__sync_fetch_and_add(&acts->overruns, 1);
	if (kill && enforcing() && obj->tgid == bpf_get_current_pid_tgid() >> 32) {
		bpf_send_signal(9 /* SIGKILL */);
		__sync_fetch_and_add(&acts->killed, 1);
	}
}

/*
 * Add `delta` bytes of `source` (negative: remove) along the object's
 * ancestry, of which `unique` bytes were (or now are) pinned by nothing else
 * of the process, in one pass: a charge also keeps peaks, counts pins.high
 * crossings and, where it takes a cgroup over its pins.max, the overrun and
 * its action.
 */
static __always_inline void apply(const struct pin_object *obj, __u32 source, __s64 delta, __s64 unique)
{
	struct cgroup_usage *u;
	bool over = false, kill = false;
	__u32 src = source;

	if (src >= PINCG_NR_SOURCES)
		return;
	for (int i = 0; i < PINCG_MAX_DEPTH; i++) {
		__u64 after;
		int action;

		if (i >= obj->depth)
			break;
		u = usage_of(obj->ancestors[i]);
		if (!u)
			continue;
		__sync_fetch_and_add(&u->total[src], delta);
		/* The deepest slot is the charged cgroup itself (owner_is_*). */
		if (i == obj->depth - 1)
			__sync_fetch_and_add(&u->local[src], delta);
		after = __sync_fetch_and_add(&u->pinned, unique) + unique;
		if (unique <= 0)
			continue;
		action = raised(obj->ancestors[i], u, after, unique);
		over |= action >= 0;
		kill |= action == PINCG_ACT_KILL;
	}
	if (over)
		overrun(obj, source, kill);
}

/*
 * Bytes of [addr, addr + len) the current process has not pinned already
 * under its current cgroup: what pinning the range would add.
 */
static __always_inline __u64 new_bytes(__u64 addr, __u64 len)
{
	return span_walk(bpf_get_current_cgroup_id(), bpf_get_current_pid_tgid() >> 32,
			 addr, page_span(addr, len), SPAN_COUNT_NEW);
}

/*
 * At a refusal point, before anything is pinned: would `bytes` new bytes
 * take the current task's cgroup or an ancestor over its pins.max? In
 * enforce mode, counts a `max` event at each such cgroup and returns
 * -ENOMEM. In monitor mode, counts `would_refuse` and returns 0: the pin
 * goes ahead, and its charge counts the `max` event (an overrun), so one
 * request is one event.
 */
static __always_inline int admit_bytes(__u64 bytes, __u32 source)
{
	struct source_actions *acts;
	bool enforce = enforcing();
	bool over = false;

	for (int level = 0; level < PINCG_MAX_DEPTH; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);
		struct cgroup_limit *lim;
		struct cgroup_usage *u;

		if (!id)
			break;
		lim = bpf_map_lookup_elem(&limits, &id);
		if (!lim)
			continue;
		u = usage_of(id);
		if (!u || u->pinned + bytes <= lim->max)
			continue;
		if (enforce)
			__sync_fetch_and_add(&u->events_max, 1);
		over = true;
	}
	if (!over)
		return 0;
	acts = actions_of(source);
	if (!acts)
		return 0;
	if (!enforce) {
		__sync_fetch_and_add(&acts->would_refuse, 1);
		return 0;
	}
	__sync_fetch_and_add(&acts->refused, 1);
	return -12; /* -ENOMEM */
}

/* admit_bytes() for pinning [addr, addr + len): only new pages count. */
static __always_inline int admit(__u64 addr, __u64 len, __u32 source)
{
	return admit_bytes(new_bytes(addr, len), source);
}

/*
 * Fill `obj` with the pinner's cgroup: the cgroup v2 id of the task and its
 * ancestors from the root down. A cgroup nested deeper than
 * PINCG_MAX_DEPTH - 1 levels keeps its own id in the last slot, so it and
 * its shallowest ancestors are charged; the levels in between are not.
 */
static __always_inline void owner_is_current(struct pin_object *obj)
{
	__u64 leaf = bpf_get_current_cgroup_id();
	__u32 depth = 0;

	for (int level = 0; level < PINCG_MAX_DEPTH; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);

		if (!id)
			break;
		obj->ancestors[level] = id;
		depth = level + 1;
	}
	/* Root is level 0, so depth >= 1 on cgroup v2. The deepest slot is
	 * always the task's own cgroup (a no-op unless it is nested deeper). */
	if (depth == 0)
		depth = 1;
	obj->ancestors[(depth - 1) & (PINCG_MAX_DEPTH - 1)] = leaf;
	obj->depth = depth;
	obj->cgroup = leaf;
	obj->tgid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(obj->comm, sizeof(obj->comm));
}

/* The same for a task recorded by the subsystem (pins made in a kworker or
 * another process on the owner's behalf). */
static __always_inline void owner_is_task(struct pin_object *obj, struct task_struct *task)
{
	struct cgroup *cgrp = BPF_CORE_READ(task, cgroups, dfl_cgrp);
	int level = BPF_CORE_READ(cgrp, level);
	__u32 depth = 0;

	for (int i = 0; i < PINCG_MAX_DEPTH; i++) {
		struct cgroup *ancestor = NULL;

		if (i > level)
			break;
		bpf_core_read(&ancestor, sizeof(ancestor), &cgrp->ancestors[i]);
		obj->ancestors[i] = BPF_CORE_READ(ancestor, kn, id);
		depth = i + 1;
	}
	if (depth == 0)
		depth = 1;
	obj->cgroup = BPF_CORE_READ(cgrp, kn, id);
	obj->ancestors[(depth - 1) & (PINCG_MAX_DEPTH - 1)] = obj->cgroup;
	obj->depth = depth;
	obj->tgid = BPF_CORE_READ(task, tgid);
	bpf_probe_read_kernel_str(obj->comm, sizeof(obj->comm), &task->comm);
}

/* Drop the entry of a released object; the charged cgroups get it back. */
static __always_inline void release_found(struct pin_key *key, struct pin_object *obj, __u32 source)
{
	apply(obj, source, -(__s64)obj->bytes,
	      -(__s64)span_walk(obj->cgroup, obj->tgid, obj->addr, obj->bytes, SPAN_REMOVE));
	bpf_map_delete_elem(&objects, key);
	count(PINCG_CNT_RELEASES);
}

/* Return a release recorded in the ledger; one it never saw (a pin made
 * before it existed) is counted as unknown_release. */
static __always_inline void ledger_release(__u64 object, __u32 source)
{
	struct pin_key key = { .object = object, .source = source };
	struct pin_object *obj = bpf_map_lookup_elem(&objects, &key);

	if (!obj) {
		count(PINCG_CNT_UNKNOWN_RELEASE);
		return;
	}
	release_found(&key, obj, source);
}

/* The same at a teardown that also sees objects that never pinned (a VFIO
 * mapping of an mdev-only container): those are not unknown releases. */
static __always_inline void ledger_release_held(__u64 object, __u32 source)
{
	struct pin_key key = { .object = object, .source = source };
	struct pin_object *obj = bpf_map_lookup_elem(&objects, &key);

	if (obj)
		release_found(&key, obj, source);
}

/*
 * Record a new object owned by `owner` (NULL: the current task). `source`
 * repeats key->source as a plain value: read back from the key on the
 * stack, 6.1's verifier loses its bounds.
 */
static __always_inline void record(struct pin_key *key, __u32 source, struct task_struct *owner,
				   __u64 addr, __u64 bytes)
{
	__u32 zero = 0;
	struct pin_object *obj = bpf_map_lookup_elem(&scratch, &zero);

	if (!obj)
		return;
	__builtin_memset(obj, 0, sizeof(*obj));
	if (owner)
		owner_is_task(obj, owner);
	else
		owner_is_current(obj);
	obj->bytes = bytes;
	obj->addr = addr;
	obj->since_ns = bpf_ktime_get_boot_ns();
	if (bpf_map_update_elem(&objects, key, obj, BPF_NOEXIST)) {
		/* Documented fail mode: an unrecorded pin is not charged. */
		count(PINCG_CNT_LEDGER_FULL);
		return;
	}
	apply(obj, source, bytes, span_walk(obj->cgroup, obj->tgid, addr, bytes, SPAN_ADD));
	count(PINCG_CNT_CHARGES);
}

/*
 * Charge a new pin object of `bytes` at user address `addr` to the current
 * task's cgroup and its ancestors.
 */
static __always_inline void ledger_charge_current(__u64 object, __u32 source, __u64 addr, __u64 bytes)
{
	struct pin_key key = { .object = object, .source = source };

	if (!bytes)
		return;
	if (bpf_map_lookup_elem(&objects, &key)) {
		/* Slab address reuse: the old object's release was missed. */
		count(PINCG_CNT_STALE_OBJECT);
		ledger_release(object, source);
	}
	record(&key, source, NULL, addr, bytes);
}

/*
 * An object that pins in several steps (a VFIO DMA mapping pinned chunk by
 * chunk) now holds `bytes`. The first step records it for `owner`; later
 * steps move its charge by the difference, to the cgroups recorded first.
 * With `existing_only`, an object the ledger does not hold is left alone.
 */
static __always_inline void ledger_resize(__u64 object, __u32 source, struct task_struct *owner,
					  __u64 addr, __u64 bytes, bool existing_only)
{
	struct pin_key key = { .object = object, .source = source };
	struct pin_object *obj = bpf_map_lookup_elem(&objects, &key);
	__s64 delta, unique;

	if (!obj) {
		if (!existing_only && bytes)
			record(&key, source, owner, addr, bytes);
		return;
	}
	delta = (__s64)bytes - (__s64)obj->bytes;
	if (!delta)
		return;
	/* The object grows or shrinks at its end: the pages in between. */
	if (delta > 0)
		unique = span_walk(obj->cgroup, obj->tgid, obj->addr + obj->bytes, delta, SPAN_ADD);
	else
		unique = -(__s64)span_walk(obj->cgroup, obj->tgid, obj->addr + bytes, -delta, SPAN_REMOVE);
	apply(obj, source, delta, unique);
	__sync_fetch_and_add(&obj->bytes, delta);
}

/*
 * Per-task in-flight objects: the object a task works on between a hook at
 * a function's entry and one at its return (or a witness hook called in
 * between, such as the unpin inside a release). Keyed by pid_tgid.
 */
#define PINCG_INFLIGHT_MAP(name)			\
	struct {					\
		__uint(type, BPF_MAP_TYPE_HASH);	\
		__uint(max_entries, 4096);		\
		__type(key, __u64);			\
		__type(value, __u64);			\
	} name SEC(".maps")

/*
 * Entries in this object's in-flight maps. Witness hooks sit on paths every
 * unpin on the node takes (unpin_user_page, ...): they test this first, one
 * load, and look up their map only while some task is mid-release.
 */
__u64 pincg_inflight = 0;

static __always_inline bool inflight_any(void)
{
	return *(volatile __u64 *)&pincg_inflight != 0;
}

static __always_inline void inflight_set(void *map, __u64 object)
{
	__u64 tid = bpf_get_current_pid_tgid();

	if (!bpf_map_update_elem(map, &tid, &object, BPF_NOEXIST))
		__sync_fetch_and_add(&pincg_inflight, 1);
	else
		bpf_map_update_elem(map, &tid, &object, BPF_EXIST);
}

/* The current task's in-flight object, or 0; forgotten once read. */
static __always_inline __u64 inflight_take(void *map)
{
	__u64 tid = bpf_get_current_pid_tgid();
	__u64 *slot = bpf_map_lookup_elem(map, &tid);
	__u64 object = slot ? *slot : 0;

	if (slot && !bpf_map_delete_elem(map, &tid))
		__sync_fetch_and_add(&pincg_inflight, -1);
	return object;
}

#endif /* PINCG_LEDGER_BPF_H */
