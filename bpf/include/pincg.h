/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Definitions shared by the BPF programs and the Rust agent.
 *
 * The agent reads these types from the skeleton's BTF (libbpf-cargo
 * generates them in `skel::types`), so a change here is a change to both
 * sides. A changed map layout makes libbpf refuse to reuse the pinned maps
 * of an older agent; `pincg unload` clears them.
 */
#ifndef PINCG_H
#define PINCG_H

/* Deepest cgroup level whose ancestors are charged individually. */
#define PINCG_MAX_DEPTH 16

/* Sizing of the maps (see docs/architecture.md, "BPF map sizing"). */
#define PINCG_MAX_OBJECTS 131072
#define PINCG_MAX_CGROUPS 16384
#define PINCG_MAX_SPANS 262144

/* Pages per entry of the `spans` map (512 KiB of user address space). */
#define PINCG_SPAN_PAGES 128

/* enum pincg_source, generated from cgroup-spec's `Source` (bpf/build.rs). */
#include "pincg_sources.h"

/* Health counters, one slot each in the `counters` array map. */
enum pincg_counter {
	/* A pin object could not be recorded: the objects map is full. */
	PINCG_CNT_LEDGER_FULL = 0,
	/* A cgroup could not get a usage entry: the usage map is full. */
	PINCG_CNT_USAGE_FULL = 1,
	/* A charge arrived for a key already in the ledger (missed release). */
	PINCG_CNT_STALE_OBJECT = 2,
	/* A release for an object the ledger never saw (pinned before load). */
	PINCG_CNT_UNKNOWN_RELEASE = 3,
	/* Charges and releases recorded. */
	PINCG_CNT_CHARGES = 4,
	PINCG_CNT_RELEASES = 5,
	/* A span entry could not be created: the spans map is full, so the
	 * pages were counted as not pinned by anything else (never less). */
	PINCG_CNT_SPANS_FULL = 6,
	/* A request of a limited cgroup was refused (enforce) or let through
	 * unreserved (monitor): the requests map was full. */
	PINCG_CNT_REQUESTS_FULL = 7,
	/* A request of a limited cgroup found the ledger without room for its
	 * objects (the last PINCG_UNLIMITED_SHARE of `objects` is kept for
	 * cgroups without a limit): refused (enforce) or let through (monitor). */
	PINCG_CNT_LEDGER_ROOM = 8,
	PINCG_NR_COUNTERS = 9,
};

/* Enforcement mode, slot 0 of the `settings` array map. */
enum pincg_mode {
	PINCG_MODE_MONITOR = 0, /* never refuse; count what would be refused */
	PINCG_MODE_ENFORCE = 1,
};

/* What an overrun (a pin no refusal point could stop) does, per cgroup. */
enum pincg_action {
	PINCG_ACT_ALERT = 0,  /* count the event only */
	PINCG_ACT_KILL = 1,   /* SIGKILL the pinning task, from BPF */
	PINCG_ACT_FREEZE = 2, /* the agent freezes the cgroup */
};

#define PINCG_NO_LIMIT (~0ULL)

/* pins.max / pins.high of one cgroup, written by the agent. */
struct cgroup_limit {
	__u64 max;  /* bytes, PINCG_NO_LIMIT for none */
	__u64 high; /* bytes, PINCG_NO_LIMIT for none */
	enum pincg_action action;
	__u32 pad;
};

struct pincg_config {
	enum pincg_mode mode;
	__u32 pad;
};

/* Refusals and overruns per source, slot = enum pincg_source. */
struct source_actions {
#ifdef PINCG_TEST_LAYOUT_CHANGE
	/* The upgrade test's third build: the same size, two fields swapped. */
	__u64 would_refuse;
	__u64 refused;
#else
	__u64 refused;	    /* requests refused before pinning (enforce) */
	__u64 would_refuse; /* requests monitor mode let through */
#endif
	__u64 overruns; /* pins that took a cgroup over pins.max */
	__u64 killed;	/* pinning tasks killed for an overrun */
};

/* Ledger key: one long-term pin object of one subsystem. */
struct pin_key {
	__u64 object; /* kernel address of the subsystem's pin object */
	enum pincg_source source;
	__u32 pad;
};

/* Ledger value: who was charged, and for what. */
struct pin_object {
	__u64 bytes;	/* bytes of pages pinned, page-granular */
	__u64 addr;	/* user address of the pinned range */
	__u64 since_ns; /* bpf_ktime_get_boot_ns() at charge time */
	__u64 cgroup;	/* cgroup v2 id charged (the pinner's) */
	/* Ids of the cgroups charged, root (level 0) first; `depth` valid. */
	__u64 ancestors[PINCG_MAX_DEPTH];
	__u32 depth;
	__u32 tgid; /* pinning process */
	char comm[16];
	/* Levels (bit i: ancestors[i]) whose pins.max this object's pin went
	 * over, and PINCG_OVER_KILLED once it was killed for it: a request
	 * pinned chunk by chunk counts one `max` event per cgroup, not one per
	 * chunk. */
	__u32 over;
	__u32 pad;
};

/* pin_object.over: the pinning task was sent SIGKILL for the overrun. */
#define PINCG_OVER_KILLED (1U << PINCG_MAX_DEPTH)

/*
 * Deduplication: how many live pin objects of one process, charged to one
 * cgroup, cover each page of a 512 KiB stretch of its address space. A page
 * whose count goes 0 -> 1 adds to the cgroup's unique `pinned` bytes; one
 * that goes 1 -> 0 returns them.
 */
struct span_key {
	__u64 cgroup; /* cgroup v2 id the objects were charged to */
	__u32 tgid;   /* the pinning process (one address space) */
	__u32 pad;
	__u64 index; /* user page number / PINCG_SPAN_PAGES */
};

struct span_refs {
	__u32 refs[PINCG_SPAN_PAGES];
};

/* Usage of one cgroup, per source, and its own limit events. */
struct cgroup_usage {
	__u64 local[PINCG_NR_SOURCES]; /* charged to this cgroup itself */
	__u64 total[PINCG_NR_SOURCES]; /* this cgroup and its descendants */
	/* Unique bytes of this cgroup and its descendants (pins.current):
	 * memory pinned by several sources or objects counts once. */
	__u64 pinned;
	__u64 peak;	   /* highest `pinned` seen */
	__u64 events_max;  /* requests refused or overruns at this pins.max */
	__u64 events_high; /* crossings of this pins.high */
	/* Bytes admitted at a refusal point and not yet pinned by their
	 * request (see struct pin_request): pinned + reserved never exceeds
	 * pins.max through an admission. */
	__u64 reserved;
};

/* 1/N of the `objects` map that requests of limited cgroups cannot take:
 * no tenant can fill the ledger and leave other pins uncharged. */
#define PINCG_UNLIMITED_SHARE 8

/* Requests between their admission and the end of their system call. */
#define PINCG_MAX_REQUESTS 8192

/*
 * One admitted request of one task (key: pid_tgid), from its refusal point
 * to the exit of its system call: the bytes it reserved in the `reserved`
 * of the cgroups of `held`, which its pins take over as they are charged;
 * what is left is returned when the system call ends.
 */
struct pin_request {
	__u64 cgroups[PINCG_MAX_DEPTH]; /* the task's ancestry at admission, root first */
	__u64 left;			/* reserved bytes no pin has taken yet */
	__u32 held;			/* bit i: cgroups[i] holds `left` in its reserved */
	__u32 over;			/* as pin_object.over, for the whole request */
};

#endif /* PINCG_H */
