/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What every andon sensor object shares: the event ring, the counters, the per-CPU
 * scratch record, and the one way a record leaves for user space (andon__emit).
 *
 * The ring and the counters are created by the first object loaded; every later object
 * reuses their fds (bpf_map__reuse_fd), so all sensors feed one ordered stream.
 */
#ifndef ANDON_H
#define ANDON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "../abi/events.h"

char LICENSE[] SEC("license") = "GPL";

/* load-time settings, written by the loader into .rodata before load */
const volatile struct andon_config cfg = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 24); /* resized by the loader */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ANDON_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* A record is built here first: data[] may grow past one slot (exec, long paths). */
#define SCRATCH_DATA 16384
struct scratch {
	struct andon_event ev;                         /* ev.data is the first 136 bytes ... */
	__u8 more[SCRATCH_DATA - ANDON_DATA_SMALL];    /* ... and this the rest */
	char path[8192];                               /* a path assembled right to left */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

/* Offsets into data[] are masked with this so the verifier can bound every write:
 * an offset below 8192 plus a read of at most 4096 stays inside SCRATCH_DATA. */
#define DATA_OFF_MASK 8191
#define STR_MASK (ANDON_STR_MAX - 1)

/* x & mask that the compiler cannot fold away after a range check, so the verifier
 * always sees the bound (clang drops a mask it can prove redundant). */
#define BOUND(x, mask) ({ __u64 __v = (x); asm volatile("%[v] &= %[m]" : [v] "+r"(__v) : [m] "i"(mask)); __v; })

static __always_inline void andon__count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		*v += 1;
}

static __always_inline struct scratch *andon__scratch(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&scratch, &zero);
}

/*
 * ANDON_BTF: the object is built for tp_btf, where kernel pointers the verifier knows
 * by BTF can be read with plain loads (BPF_PROBE_MEM, inlined) instead of one
 * bpf_probe_read_kernel() helper call per field. The same source also builds for
 * raw_tp, the fallback where tp_btf cannot load.
 */
#ifdef ANDON_BTF
#define andon__current_task() bpf_get_current_task_btf()
#else
#define andon__current_task() ((struct task_struct *)bpf_get_current_task())
#endif

/* Fill the fields every record carries. uid/gid are the effective ids, as Falco's user.uid. */
static __always_inline void andon__header_of(struct andon_event *e, struct task_struct *task, __u16 type, __u16 nr)
{
	e->ts = bpf_ktime_get_boot_ns();
#ifdef ANDON_BTF
	/* plain loads through the task's BTF pointer instead of a helper call: the cgroup v2
	 * id is the kernfs id of the default hierarchy's cgroup (what the helper returns) */
	e->cgroup_id = task->cgroups->dfl_cgrp->kn->id;
#else
	e->cgroup_id = bpf_get_current_cgroup_id();
#endif
#ifdef ANDON_BTF
	e->pid = task->tgid;
	e->tid = task->pid;
	const struct cred *cred = task->cred;
	e->uid = cred->euid.val;
	e->gid = cred->egid.val;
#else
	__u64 id = bpf_get_current_pid_tgid();
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->uid = BPF_CORE_READ(task, cred, euid.val);
	e->gid = BPF_CORE_READ(task, cred, egid.val);
#endif
	e->type = type;
	e->nr = nr;
	e->nstr = 0;
	e->flags = 0;
#ifdef ANDON_BTF
	/* two 8-byte loads instead of bpf_get_current_comm()'s strscpy_pad */
	__builtin_memcpy(e->comm, task->comm, sizeof(e->comm));
#else
	bpf_get_current_comm(e->comm, sizeof(e->comm));
#endif
}

static __always_inline void andon__header(struct andon_event *e, __u16 type, __u16 nr)
{
	andon__header_of(e, andon__current_task(), type, nr);
}

/* Append a user-space string at data[off]; returns the new offset. */
static __always_inline __u32 andon__put_user_str(struct scratch *s, __u32 off, const void *src)
{
	if (off > DATA_OFF_MASK)
		return off;
	/* one byte past PATH_MAX: a 4095-character path (legal) fits whole, and only a
	 * string that fills all of it was really cut */
	long n = bpf_probe_read_user_str(&s->ev.data[BOUND(off, DATA_OFF_MASK)], ANDON_STR_MAX + 1, src);
	if (n <= 0) {
		/* unreadable or NULL pointer: an empty string keeps the string count right */
		s->ev.data[BOUND(off, DATA_OFF_MASK)] = 0;
		n = 1;
		if (src)
			andon__count(ANDON_STAT_ERRORS);
	} else if (n == ANDON_STR_MAX + 1) {
		s->ev.flags |= ANDON_F_TRUNCATED;
	}
	s->ev.nstr++;
	return off + n;
}

static __always_inline __u32 andon__put_kernel_str(struct scratch *s, __u32 off, const void *src)
{
	if (off > DATA_OFF_MASK)
		return off;
	long n = bpf_probe_read_kernel_str(&s->ev.data[BOUND(off, DATA_OFF_MASK)], ANDON_STR_MAX, src);
	if (n <= 0) {
		s->ev.data[BOUND(off, DATA_OFF_MASK)] = 0;
		n = 1;
	}
	s->ev.nstr++;
	return off + n;
}

/*
 * Send the record built in scratch. A record that fits one slot is copied into a
 * reserved slot; a longer one goes out as a whole number of slots, so the 256-byte
 * stride of the ring holds. A full ring is counted, never silent.
 */
static __always_inline __u64 andon__wakeup_flags(void)
{
	if (!cfg.wakeup_bytes)
		return 0; /* the kernel's adaptive wake-up: only when the reader had caught up */
	/* wake the consumer once, when the backlog crosses the mark; forcing a wake-up
	 * on every record past it would cost an irq_work per event until the next read.
	 * The consumer also polls on a timer, so a mark jumped over is not a stall. */
	__u64 pending = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	return pending >= cfg.wakeup_bytes && pending < cfg.wakeup_bytes + ANDON_SLOT ? BPF_RB_FORCE_WAKEUP
										       : BPF_RB_NO_WAKEUP;
}

static __always_inline void andon__emit(struct scratch *s, __u32 data_len)
{
	__u64 flags = andon__wakeup_flags();

	if (data_len <= ANDON_DATA_SMALL) {
		s->ev.size = ANDON_REC_SMALL;
		struct andon_event *r = bpf_ringbuf_reserve(&events, ANDON_REC_SMALL, 0);
		if (!r) {
			andon__count(ANDON_STAT_DROPS);
			return;
		}
		__builtin_memcpy(r, &s->ev, ANDON_REC_SMALL);
		bpf_ringbuf_submit(r, flags);
	} else {
		if (data_len > ANDON_DATA_MAX) {
			data_len = ANDON_DATA_MAX;
			s->ev.flags |= ANDON_F_TRUNCATED;
		}
		/* a whole number of slots, less the ring's own 8-byte header */
		__u32 size = ((ANDON_HDR_SIZE + data_len + 8 + ANDON_SLOT - 1) & ~(ANDON_SLOT - 1)) - 8;
		size &= 0x3fff; /* a no-op (size <= ANDON_REC_MAX) that shows the verifier the bound */
		s->ev.size = size;
		if (bpf_ringbuf_output(&events, &s->ev, size, flags)) {
			andon__count(ANDON_STAT_DROPS);
			return;
		}
	}
	if (s->ev.flags & ANDON_F_TRUNCATED)
		andon__count(ANDON_STAT_TRUNC);
	andon__count(ANDON_STAT_EVENTS);
}

/*
 * Assemble the path of a dentry right to left in s->path, crossing mount points up to
 * the root of the task's mount namespace (a container sees its own root). Returns the
 * index of the first byte of the NUL-terminated result. bpf_d_path is not allowed in
 * tracepoints, so the walk is ours; it stops after 48 components and marks truncation.
 */
#define PATH_START 4095
#define PATH_COMPONENTS 48

struct path_walk {
	struct dentry *d;
	struct vfsmount *vm;
	struct mount *mnt;
	__u32 pos;
	__u32 truncated;
};

/* One step of the walk, as a bpf_loop callback: the verifier checks it once instead of
 * unrolling 48 branchy iterations. Returns 1 to stop. */
static long andon__path_step(__u32 i, struct path_walk *w)
{
	struct scratch *s = andon__scratch();
	/* plain locals: BPF_CORE_READ must not see our own struct path_walk */
	struct dentry *d = w->d;
	struct vfsmount *vm = w->vm;
	struct mount *mnt = w->mnt;

	if (!s)
		return 1;
	struct dentry *mnt_root = BPF_CORE_READ(vm, mnt_root);
	struct dentry *parent = BPF_CORE_READ(d, d_parent);
	if (d == mnt_root) {
		struct mount *mp = BPF_CORE_READ(mnt, mnt_parent);
		if (mp == mnt || !mp)
			return 1; /* the root of this mount namespace */
		w->d = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = mp;
		w->vm = &mp->mnt;
		return 0;
	}
	struct qstr q;
	bpf_probe_read_kernel(&q, sizeof(q), &d->d_name);
	__u32 len = q.len & 255;
	__u32 pos = w->pos & 4095;
	if (len + 1 > pos) {
		w->truncated = 1;
		return 1;
	}
	pos -= len;
	bpf_probe_read_kernel(&s->path[pos & 4095], len, q.name);
	pos -= 1;
	s->path[pos & 4095] = '/';
	w->pos = pos;
	w->d = parent;
	/* a dentry that is its own parent without being a mount root belongs to a pseudo
	 * filesystem (memfd, pipe, anon inode): its name is the whole path */
	if (d == parent)
		return 1;
	if (i == PATH_COMPONENTS - 1)
		w->truncated = 1;
	return 0;
}

/*
 * Assemble the path of a dentry right to left in s->path, crossing mount points up to
 * the root of the task's mount namespace (a container sees its own root). Returns the
 * index of the first byte of the NUL-terminated result. bpf_d_path is not allowed in
 * tracepoints, so the walk is ours; it stops after 48 components and marks truncation.
 */
static __always_inline __u32 andon__path(struct scratch *s, struct dentry *d, struct vfsmount *vm)
{
	struct path_walk w = {
		.d = d,
		.vm = vm,
		.mnt = container_of(vm, struct mount, mnt),
		.pos = PATH_START,
	};

	s->path[PATH_START] = 0;
	bpf_loop(PATH_COMPONENTS, andon__path_step, &w, 0);
	if (w.truncated)
		s->ev.flags |= ANDON_F_TRUNCATED;
	__u32 pos = w.pos & 4095;
	if (pos == PATH_START) {
		pos -= 1;
		s->path[pos & 4095] = '/';
	}
	return pos;
}

static __always_inline __u32 andon__put_path(struct scratch *s, __u32 off, const struct path *p)
{
	struct dentry *d = BPF_CORE_READ(p, dentry);
	struct vfsmount *vm = BPF_CORE_READ(p, mnt);

	if (!d || !vm) {
		if (off <= DATA_OFF_MASK)
			s->ev.data[BOUND(off, DATA_OFF_MASK)] = 0;
		s->ev.nstr++;
		return off + 1;
	}
	__u32 pos = andon__path(s, d, vm);
	return andon__put_kernel_str(s, off, &s->path[pos & 4095]);
}

#endif
