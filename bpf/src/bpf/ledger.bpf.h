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

/* The upgrade test's second build (-DPINCG_TEST_PROGRAM_CHANGE): one more
 * instruction in the programs that count or enforce, the same effect. */
#ifdef PINCG_TEST_PROGRAM_CHANGE
#define PINCG_TEST_MARK() asm volatile("r0 = 0" ::: "r0")
#else
#define PINCG_TEST_MARK()                                                                          \
	do {                                                                                       \
	} while (0)
#endif

#include "ledger_maps.bpf.h"

static __always_inline void count(enum pincg_counter which)
{
	__u32 key = which;
	__u64 *slot = bpf_map_lookup_elem(&counters, &key);

	if (slot)
		__sync_fetch_and_add(slot, 1);
	PINCG_TEST_MARK();
}

/* x86_64 pages: what the pages counted by subsystems (npgs, locked_vm) are. */
#define PINCG_PAGE_SIZE 4096ULL

/* The kernel's IS_ERR_OR_NULL for a returned object: NULL, or an errno
 * (-MAX_ERRNO..-1) in the pointer. */
static __always_inline bool is_err_or_null(const void *ptr)
{
	return !ptr || (__u64)ptr >= (__u64)-4095;
}

/* Bytes of whole pages covering [addr, addr + len). */
static __always_inline __u64 page_span(__u64 addr, __u64 len)
{
	const __u64 page = PINCG_PAGE_SIZE;

	if (!len)
		return 0;
	return ((addr + len + page - 1) & ~(page - 1)) - (addr & ~(page - 1));
}

enum span_op {
	SPAN_COUNT_NEW, /* count pages no object covers yet; change nothing */
	SPAN_ADD,	/* one more object covers the pages */
	SPAN_REMOVE,	/* one object less covers the pages */
};

/* A walk over user pages [first, end) of one process charged to one cgroup. */
struct span_walk {
	struct span_key key;
	__u64 first;
	__u64 end;
	__u64 changed; /* pages that were uncovered (COUNT_NEW, ADD) or now are (REMOVE) */
	__u32 op;
};

/*
 * The per-page loops below are branch-free (1 = true, 0 = false, from the
 * sign bit of a difference): every page of an entry takes the same path, so
 * the verifier walks one path per page rather than every combination.
 */
static __always_inline __u64 is_zero(__u64 v)
{
	return (v - 1) >> 63; /* v < 2^32 here */
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
	struct span_walk w = {.key = {.cgroup = cgroup, .tgid = tgid}, .op = op};
	__u64 nr;

	if (bytes < PINCG_PAGE_SIZE)
		return 0;
	w.first = addr / PINCG_PAGE_SIZE;
	w.end = w.first + bytes / PINCG_PAGE_SIZE;
	nr = (w.end - 1) / PINCG_SPAN_PAGES - w.first / PINCG_SPAN_PAGES + 1;
	if (bpf_loop(nr, span_step, &w, 0) < 0)
		return bytes; /* beyond bpf_loop's 2^23 steps (4 TiB): all new */
	return w.changed * PINCG_PAGE_SIZE;
}

/*
 * `cgroup`'s usage entry, made if missing with `flags`: BPF_NOEXIST (a
 * concurrent creator wins and we use its entry), or PINCG_NO_NEW_ENTRY,
 * flags the map refuses, so that a release never makes one without a
 * branch in the loop that calls this for every level.
 */
#define PINCG_NO_NEW_ENTRY (BPF_NOEXIST | BPF_EXIST)

static __always_inline struct cgroup_usage *usage_with(__u64 cgroup, __u64 flags)
{
	static const struct cgroup_usage zero;
	struct cgroup_usage *u = bpf_map_lookup_elem(&usage, &cgroup);

	if (u)
		return u;
	bpf_map_update_elem(&usage, &cgroup, &zero, flags);
	u = bpf_map_lookup_elem(&usage, &cgroup);
	if (!u)
		count(PINCG_CNT_USAGE_FULL);
	return u;
}

static __always_inline struct cgroup_usage *usage_of(__u64 cgroup)
{
	return usage_with(cgroup, BPF_NOEXIST);
}

/*
 * `*slot` += `delta`, where a negative delta stops at zero, without a
 * branch; returns the sum. A release that finds less than it takes back
 * (its charge missed that level, whose entry another charge made since)
 * never wraps the count that limits are checked against. Counts stay
 * below 2^63.
 */
static __always_inline __u64 add_floored(__u64 *slot, __s64 delta)
{
	__u64 now = *(volatile __u64 *)slot;
	__u64 short_of = ((now + delta) >> 63) & ((__u64)delta >> 63);

	delta += (-(now + delta)) & -short_of;
	return __sync_fetch_and_add(slot, delta) + delta;
}

static __always_inline bool enforcing(void)
{
	__u32 zero = 0;
	struct pincg_config *cfg = bpf_map_lookup_elem(&settings, &zero);

	PINCG_TEST_MARK();
	return cfg && cfg->mode == PINCG_MODE_ENFORCE;
}

static __always_inline struct source_actions *actions_of(__u32 source)
{
	__u32 slot = source;

	return bpf_map_lookup_elem(&actions, &slot);
}

/* x86's TS_COMPAT: the current system call is a 32-bit one. */
#define PINCG_TS_COMPAT 0x0002

static __always_inline bool in_compat_syscall(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	return BPF_CORE_READ(task, thread_info.status) & PINCG_TS_COMPAT;
}

/* Entries in the requests map made by this object's refusal points; its
 * system-call exit hooks test this first, one load, on every call. */
__u64 pincg_requests = 0;

enum level_op {
	LEVEL_BUDGET,  /* read limits and headroom of the current ancestry */
	LEVEL_RESERVE, /* reserve `bytes` at every `limited` level */
	LEVEL_RETURN,  /* give `bytes` back at every level of `mask` */
	LEVEL_EVENT,   /* count a `max` event at every level of `mask` */
};

/*
 * A pass over the levels of the current task's ancestry (bpf_loop: the
 * verifier walks a level once, not every combination of sixteen). Levels
 * other than LEVEL_BUDGET's name the cgroups of the task's request (`tid`).
 */
struct level_walk {
	__u64 tid;
	__u64 bytes;
	__u64 headroom; /* LEVEL_BUDGET: least pins.max - pinned - reserved */
	__u32 limited;	/* LEVEL_BUDGET: bit i: level i has a limit */
	__u32 mask;	/* LEVEL_RETURN, LEVEL_EVENT: the levels to visit */
	__u32 held;	/* LEVEL_RESERVE: levels that reserved */
	__u32 over;	/* LEVEL_RESERVE: levels that could not */
	__u32 op;
	__u32 no_usage; /* LEVEL_BUDGET: a level has no usage entry */
};

/*
 * Add `bytes` to `*reserved` if `pinned` + `*reserved` + `bytes` stays
 * within `max`, compared without overflow: a claim near 2^64 must not wrap
 * into headroom. (Added, then taken back if over: a concurrent request may
 * see the sum over `max` meanwhile, and be refused, as between any two
 * requests racing for the last headroom.)
 */
static __always_inline bool reserve_within(__u64 *reserved, __u64 pinned, __u64 max, __u64 bytes)
{
	__u64 room = pinned < max ? max - pinned : 0;
	__u64 old;

	if (bytes > room)
		return false;
	old = __sync_fetch_and_add(reserved, bytes);
	if (old <= room - bytes)
		return true;
	__sync_fetch_and_add(reserved, -bytes);
	return false;
}

static long level_step(__u64 i, struct level_walk *w)
{
	__u32 level = i & (PINCG_MAX_DEPTH - 1), bit = 1U << level;
	struct pin_request *req;
	struct cgroup_limit *lim;
	struct cgroup_usage *u;
	__u64 id, after;

	if (w->op == LEVEL_BUDGET) {
		id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			return 1;
		/* Made now for every level, so the charge finds them; a full
		 * usage map is no room at all for a limited request. */
		u = usage_of(id);
		w->no_usage |= !u;
		lim = bpf_map_lookup_elem(&limits, &id);
		if (!lim)
			return 0;
		w->limited |= bit;
		after = u ? u->pinned + u->reserved : ~0ULL;
		if (u && after < u->pinned)
			after = ~0ULL; /* saturated, never wrapped */
		if (after >= lim->max)
			w->headroom = 0;
		else if (lim->max - after < w->headroom)
			w->headroom = lim->max - after;
		return 0;
	}
	if (!((w->op == LEVEL_RESERVE ? w->limited : w->mask) & bit))
		return 0;
	req = bpf_map_lookup_elem(&requests, &w->tid);
	if (!req)
		return 1;
	if (w->op == LEVEL_RESERVE)
		req->cgroups[level] = bpf_get_current_ancestor_cgroup_id(level);
	id = req->cgroups[level];
	u = bpf_map_lookup_elem(&usage, &id);
	if (w->op == LEVEL_EVENT) {
		if (u)
			__sync_fetch_and_add(&u->events_max, 1);
		return 0;
	}
	if (w->op == LEVEL_RETURN) {
		if (u)
			__sync_fetch_and_add(&u->reserved, -w->bytes);
		return 0;
	}
	lim = bpf_map_lookup_elem(&limits, &id);
	if (!lim || lim->max == PINCG_NO_LIMIT)
		return 0; /* no pins.max (gone since the budget was read, or pins.high only) */
	if (!u) {
		w->over |= bit; /* no usage entry: no room to charge */
		return 0;
	}
	if (reserve_within(&u->reserved, u->pinned, lim->max, w->bytes))
		w->held |= bit;
	else
		w->over |= bit;
	return 0;
}

/* One pass of `op` over the levels of `mask`, `bytes` each. */
static __always_inline void levels(struct level_walk *w, __u32 op, __u32 mask, __u64 bytes)
{
	w->op = op;
	w->mask = mask;
	w->bytes = bytes;
	bpf_loop(PINCG_MAX_DEPTH, level_step, w, 0);
}

/*
 * A charge raised `cgroup`'s usage to `after`: peak, a pins.high crossing,
 * and whether it is over its pins.max. Only the `unreserved` part of a
 * charge can overrun: it does when it takes what the cgroup has committed
 * (`after` + the `reserved` of requests still pinning) over pins.max.
 * Returns the action the cgroup's limit asks for, or -1 if within its max.
 */
static __always_inline int raised(__u64 cgroup, struct cgroup_usage *u, __u64 after, __u64 delta,
				  __u64 unreserved, __u64 reserved)
{
	struct cgroup_limit *lim = bpf_map_lookup_elem(&limits, &cgroup);

	if (after > u->peak)
		u->peak = after; /* racy by design: peak is a watermark */
	if (!lim)
		return -1;
	if (after - delta <= lim->high && after > lim->high)
		__sync_fetch_and_add(&u->events_high, 1);
	if (!unreserved || after + reserved <= lim->max)
		return -1;
	return lim->action;
}

/*
 * A charge took the cgroups of `fresh` (bit i: obj->ancestors[i]) over their
 * pins.max for the first time in its request and object (their `max`
 * events are counted by apply), where nothing refused it. The first
 * overrun of a request is counted per source and, in enforce mode with
 * `kill`, SIGKILLs the pinning task (current in every charge hook) once.
 * Freeze is applied by the agent, which sees the overrun.
 */
static __always_inline void overrun(struct pin_object *obj, struct pin_request *req, __u32 source,
				    __u32 before, __u32 fresh, bool kill)
{
	struct source_actions *acts = actions_of(source);

	__sync_fetch_and_or(&obj->over, fresh);
	if (req)
		req->over |= fresh; /* only its own task charges it */
	if (!acts)
		return;
	if (!(before & ~PINCG_OVER_KILLED))
		__sync_fetch_and_add(&acts->overruns, 1);
	if (kill && !(before & PINCG_OVER_KILLED) && enforcing() &&
	    obj->tgid == bpf_get_current_pid_tgid() >> 32) {
		__sync_fetch_and_or(&obj->over, PINCG_OVER_KILLED);
		if (req)
			req->over |= PINCG_OVER_KILLED;
		bpf_send_signal(9 /* SIGKILL */);
		__sync_fetch_and_add(&acts->killed, 1);
	}
}

/* 1 if v != 0, without a branch (the verifier walks one path per level). */
static __always_inline __u64 nonzero(__u64 v)
{
	return (v | -v) >> 63;
}

/*
 * The current task's admitted request, for a charge of `obj`. If `obj` is
 * not charged where the request reserved (the task moved mid-request, or
 * is nested deeper than PINCG_MAX_DEPTH), the reservation is returned now
 * and the charge is an unreserved one: nothing is counted twice.
 */
static __always_inline struct pin_request *request_for(const struct pin_object *obj)
{
	struct level_walk w = {.tid = bpf_get_current_pid_tgid()};
	struct pin_request *req = bpf_map_lookup_elem(&requests, &w.tid);
	__u64 depth = obj->depth, moved = 0;

	if (!req)
		return NULL;
	for (__u64 i = 0; i < PINCG_MAX_DEPTH; i++)
		moved |= (req->held >> i & 1) &
			 (nonzero(obj->ancestors[i] ^ req->cgroups[i]) | ((depth - 1 - i) >> 63));
	if (moved && req->left)
		levels(&w, LEVEL_RETURN, req->held, req->left);
	if (moved) {
		req->held = 0;
		req->left = 0;
	}
	return req;
}

/*
 * Add `delta` bytes of `source` (negative: remove) along the object's
 * ancestry, of which `unique` bytes were (or now are) pinned by nothing else
 * of the process, in one pass. A charge takes what it can of its request's
 * reservation (moving those bytes from `reserved` to `pinned`), keeps
 * peaks, counts pins.high crossings and, where its unreserved bytes take a
 * cgroup over its pins.max, one `max` event per request and object there,
 * the overrun and its action. `obj` is the ledger's entry (it keeps which
 * limits it went over).
 */
static __always_inline void apply(struct pin_object *obj, __u32 source, __s64 delta, __s64 unique)
{
	struct pin_request *req = NULL;
	struct cgroup_usage *u;
	bool kill = false;
	__u64 flags;
	__u32 over = 0, before = obj->over, held = 0;
	__u32 src = source;
	__u64 take = 0;

	if (src >= PINCG_NR_SOURCES)
		return;
	if (unique > 0) {
		req = request_for(obj);
		if (req) {
			take = req->left < (__u64)unique ? req->left : (__u64)unique;
			req->left -= take;
			held = req->held;
			before |= req->over;
		}
	}
	/* A release never makes a usage entry, nor takes a count below 0. */
	flags = delta > 0 ? BPF_NOEXIST : PINCG_NO_NEW_ENTRY;
	for (int i = 0; i < PINCG_MAX_DEPTH; i++) {
		__u64 after, reserved, mine;
		int action;

		if (i >= obj->depth)
			break;
		u = usage_with(obj->ancestors[i], flags);
		if (!u)
			continue;
		__sync_fetch_and_add(&u->total[src], delta);
		/* The deepest slot is the charged cgroup itself (owner_is_*). */
		if (i == obj->depth - 1)
			__sync_fetch_and_add(&u->local[src], delta);
		after = add_floored(&u->pinned, unique);
		if (unique <= 0)
			continue;
		/* Pinned first, reserved after: the sum never dips below the truth. */
		mine = take & -(__u64)(held >> i & 1);
		reserved = __sync_fetch_and_add(&u->reserved, -mine) - mine;
		action = raised(obj->ancestors[i], u, after, unique, unique - take, reserved);
		if (action < 0)
			continue;
		__sync_fetch_and_add(&u->events_max, 1 - (before >> i & 1));
		over |= 1U << i;
		kill |= action == PINCG_ACT_KILL;
	}
	if (over & ~before)
		overrun(obj, req, source, before, over & ~before, kill);
}

/*
 * Bytes of [addr, addr + len) the current process has not pinned already
 * under its current cgroup: what pinning the range would add.
 */
static __always_inline __u64 new_bytes(__u64 addr, __u64 len)
{
	return span_walk(bpf_get_current_cgroup_id(), bpf_get_current_pid_tgid() >> 32, addr,
			 page_span(addr, len), SPAN_COUNT_NEW);
}

/*
 * Admission. A request's bytes are checked and reserved at once at every
 * ancestor with a limit (pinned + reserved + bytes <= pins.max), so
 * concurrent requests cannot pass against the same headroom; its charges
 * convert the reservation (apply), and the end of its system call returns
 * what is left (request_end). The work is bounded by what is real: a claim
 * is only walked page by page (new_bytes) when neither its size nor its
 * size less all the cgroup already pins decides it.
 */

/* The limits and headroom of the current task's ancestry. */
static __always_inline void budget_of_current(struct level_walk *w)
{
	w->tid = bpf_get_current_pid_tgid();
	w->headroom = ~0ULL;
	w->limited = 0;
	w->held = 0;
	w->over = 0;
	w->no_usage = 0;
	levels(w, LEVEL_BUDGET, 0, 0);
	if (w->limited && w->no_usage)
		w->headroom = 0;
}

/*
 * Whether the ledger has room for `nr` more objects of a limited cgroup:
 * those may fill `objects` only up to all but its last 1/8, kept for
 * cgroups without a limit, so a tenant within its pins.max (thousands of
 * one-page buffers) cannot leave anyone's pins uncharged; a limited one is
 * refused rather than left uncharged.
 */
static __always_inline bool ledger_room(__u64 nr)
{
	__u32 charges = PINCG_CNT_CHARGES, releases = PINCG_CNT_RELEASES;
	__u64 *in = bpf_map_lookup_elem(&counters, &charges);
	__u64 *out = bpf_map_lookup_elem(&counters, &releases);
	__u64 capacity = ((struct bpf_map *)&objects)->max_entries;
	__u64 live = in && out && *in > *out ? *in - *out : 0;

	return live + nr <= capacity - capacity / PINCG_UNLIMITED_SHARE;
}

/* What the current cgroup already pins: the most a claim can share. */
static __always_inline __u64 current_pinned(void)
{
	__u64 leaf = bpf_get_current_cgroup_id();
	struct cgroup_usage *u = bpf_map_lookup_elem(&usage, &leaf);

	return u ? u->pinned : 0;
}

/*
 * Whether a request claiming `claim` bytes is decided without a walk, and
 * the bytes it is checked with: the claim itself if it fits the headroom,
 * or, if even the claim less everything the cgroup pins does not fit, that
 * lower bound of its new bytes (refused at O(1)). Otherwise its new bytes
 * must be counted, and the claim is at most the headroom plus real pins.
 */
static __always_inline bool claim_decided(const struct level_walk *w, __u64 claim, __u64 *bytes)
{
	__u64 shared = current_pinned();

	if (claim <= w->headroom) {
		*bytes = claim;
		return true;
	}
	if (claim - w->headroom > shared) {
		*bytes = claim - shared;
		return true;
	}
	return false;
}

/*
 * Return what the current task's request still holds and forget it. A
 * system call's exit (`gated`) looks only if this object made requests; a
 * new request looks always, since an entry whose exit was missed may be
 * another object's (an io_uring registration's, see request_open).
 */
static __always_inline void request_close(bool gated)
{
	struct level_walk w = {.tid = bpf_get_current_pid_tgid()};
	struct pin_request *req;

	if (gated && !*(volatile __u64 *)&pincg_requests)
		return;
	req = bpf_map_lookup_elem(&requests, &w.tid);
	if (!req)
		return;
	if (req->left && req->held)
		levels(&w, LEVEL_RETURN, req->held, req->left);
	if (!bpf_map_delete_elem(&requests, &w.tid) && *(volatile __u64 *)&pincg_requests)
		__sync_fetch_and_add(&pincg_requests, -1);
}

static __always_inline void request_end(void)
{
	request_close(true);
}

/*
 * A request with nothing to reserve, where the kernel has no refusal point
 * (io_uring before 7.0): its charges still record in it the limits they
 * went over, so one registration of many buffers is one `max` event, one
 * overrun and one kill, as a refused request is one event.
 */
static long limit_step(__u64 i, __u32 *limited)
{
	__u64 id = bpf_get_current_ancestor_cgroup_id(i & (PINCG_MAX_DEPTH - 1));

	if (!id)
		return 1;
	*limited = !!bpf_map_lookup_elem(&limits, &id);
	return *limited;
}

static __always_inline void request_open(void)
{
	static const struct pin_request none;
	__u64 tid = bpf_get_current_pid_tgid();
	__u32 limited = 0;

	request_close(false);
	/* Only limited cgroups have events to count (and take map room); a
	 * look at the limits, which makes no usage entry. */
	bpf_loop(PINCG_MAX_DEPTH, limit_step, &limited, 0);
	if (!limited)
		return;
	if (!bpf_map_update_elem(&requests, &tid, &none, BPF_NOEXIST))
		__sync_fetch_and_add(&pincg_requests, 1);
}

/*
 * At a refusal point, before anything is pinned: admit a request of `bytes`
 * new bytes (see claim_decided) and reserve them at every limited ancestor,
 * or, if they would take one over its pins.max, count a `max` event at each
 * such cgroup and return -ENOMEM (enforce mode). In monitor mode the
 * request goes ahead unreserved, `would_refuse` is counted, and its charge
 * counts the `max` event (an overrun), so one request is one event. A
 * request that finds the requests map full, or the ledger without room for
 * its `nr_objects` (ledger_room), is refused (enforce) or let through
 * unreserved (monitor): fail closed.
 */
static __always_inline int admit_bytes(struct level_walk *w, __u64 bytes, __u64 nr_objects,
				       __u32 source)
{
	static const struct pin_request none;
	struct source_actions *acts = actions_of(source);
	bool enforce = enforcing();
	struct pin_request *req;

	if (!w->limited)
		return 0;
	if (!ledger_room(nr_objects)) {
		count(PINCG_CNT_LEDGER_ROOM);
		if (!enforce)
			return 0;
		if (acts)
			__sync_fetch_and_add(&acts->refused, 1);
		return -12; /* -ENOMEM */
	}
	request_close(false); /* one whose exit was never seen (none expected) */
	if (bpf_map_update_elem(&requests, &w->tid, &none, BPF_NOEXIST)) {
		count(PINCG_CNT_REQUESTS_FULL);
		if (!enforce)
			return 0;
		if (acts)
			__sync_fetch_and_add(&acts->refused, 1);
		return -12; /* -ENOMEM */
	}
	__sync_fetch_and_add(&pincg_requests, 1);
	levels(w, LEVEL_RESERVE, 0, bytes);
	if (w->over && w->held)
		levels(w, LEVEL_RETURN, w->held, bytes);
	req = bpf_map_lookup_elem(&requests, &w->tid);
	if (req && !w->over) {
		req->held = w->held;
		req->left = bytes;
	}
	if (!w->over) {
		/* A compat call's exit is not hooked: checked, not reserved. */
		if (in_compat_syscall())
			request_end();
		return 0;
	}
	if (!enforce) {
		if (acts)
			__sync_fetch_and_add(&acts->would_refuse, 1);
		return 0;
	}
	levels(w, LEVEL_EVENT, w->over, 0);
	request_end();
	if (acts)
		__sync_fetch_and_add(&acts->refused, 1);
	return -12; /* -ENOMEM */
}

/* Admission of pinning [addr, addr + len): only new pages count, counted
 * only when the claim's size does not decide (claim_decided). */
static __always_inline int admit(__u64 addr, __u64 len, __u32 source)
{
	struct level_walk w;
	__u64 bytes;

	budget_of_current(&w);
	if (!w.limited)
		return 0;
	if (!claim_decided(&w, page_span(addr, len), &bytes))
		bytes = new_bytes(addr, len);
	return admit_bytes(&w, bytes, 1, source);
}

/* Admission of a request that cannot be read whole: in a limited cgroup
 * it claims everything (refused in enforce mode, would_refuse in monitor). */
static __always_inline int admit_everything(__u32 source)
{
	struct level_walk w;

	budget_of_current(&w);
	return admit_bytes(&w, ~0ULL, 1, source);
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
	struct pin_key key = {.object = object, .source = source};
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
	struct pin_key key = {.object = object, .source = source};
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
	/* The entry itself, which keeps the limits its pin went over. */
	obj = bpf_map_lookup_elem(&objects, key);
	if (!obj)
		return; /* released at once by another CPU: nothing to charge */
	apply(obj, source, bytes, span_walk(obj->cgroup, obj->tgid, addr, bytes, SPAN_ADD));
	count(PINCG_CNT_CHARGES);
}

/*
 * Charge a new pin object of `bytes` at user address `addr` to the current
 * task's cgroup and its ancestors.
 */
static __always_inline void ledger_charge_current(__u64 object, __u32 source, __u64 addr,
						  __u64 bytes)
{
	struct pin_key key = {.object = object, .source = source};

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
	struct pin_key key = {.object = object, .source = source};
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
		unique = -(__s64)span_walk(obj->cgroup, obj->tgid, obj->addr + bytes, -delta,
					   SPAN_REMOVE);
	apply(obj, source, delta, unique);
	__sync_fetch_and_add(&obj->bytes, delta);
}

/*
 * Per-task in-flight objects: the object a task works on between a hook at
 * a function's entry and one at its return (or a witness hook called in
 * between, such as the unpin inside a release). Keyed by pid_tgid.
 */
#define PINCG_INFLIGHT_MAP(name)                                                                   \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_HASH);                                                   \
		__uint(max_entries, 4096);                                                         \
		__type(key, __u64);                                                                \
		__type(value, __u64);                                                              \
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
