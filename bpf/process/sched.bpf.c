/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Process lifecycle from the scheduler's tracepoints: exec, fork/clone, exit.
 *
 * sched_process_exec fires after the new image is set up and before it runs, in the
 * context of the task itself, so the new mm's argv and the task's creds, namespaces,
 * cwd and cgroups are all readable here. Failed execs never reach it: the syscall
 * dispatcher (syscalls/sys_exit.bpf.c) reports those.
 */
#include "../include/andon.h"

/* kernel_cap_t became struct { u64 val; } in 6.3; before it was { u32 cap[2]; }.
 * Both are 8 bytes in the same place, so one raw 8-byte read serves both. */
static __always_inline __u64 read_cap(const void *p)
{
	__u64 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), p);
	return v;
}

#define I_CTIME_QUERIED (1U << 31)

/* inode timestamps moved: i_ctime (< 6.6), __i_ctime (6.6-6.10), i_ctime_sec/nsec (6.11+) */
struct inode___v611 {
	time64_t i_ctime_sec;
	time64_t i_mtime_sec;
	u32 i_ctime_nsec;
	u32 i_mtime_nsec;
} __attribute__((preserve_access_index));

struct inode___v66 {
	struct timespec64 __i_ctime;
	struct timespec64 i_mtime;
} __attribute__((preserve_access_index));

struct inode___old {
	struct timespec64 i_ctime;
	struct timespec64 i_mtime;
} __attribute__((preserve_access_index));

static __always_inline void inode_times(struct inode *ino, __u64 *ctime, __u64 *mtime)
{
	if (bpf_core_field_exists(struct inode___v611, i_ctime_sec)) {
		struct inode___v611 *i = (void *)ino;
		/* 6.13+ (multigrain timestamps) keeps I_CTIME_QUERIED in bit 31 of i_ctime_nsec;
		 * inode_get_ctime_nsec() masks it off, and so must we */
		*ctime = BPF_CORE_READ(i, i_ctime_sec) * 1000000000ULL + (BPF_CORE_READ(i, i_ctime_nsec) & ~I_CTIME_QUERIED);
		*mtime = BPF_CORE_READ(i, i_mtime_sec) * 1000000000ULL + BPF_CORE_READ(i, i_mtime_nsec);
	} else if (bpf_core_field_exists(struct inode___v66, __i_ctime)) {
		struct inode___v66 *i = (void *)ino;
		*ctime = BPF_CORE_READ(i, __i_ctime.tv_sec) * 1000000000ULL + BPF_CORE_READ(i, __i_ctime.tv_nsec);
		*mtime = BPF_CORE_READ(i, i_mtime.tv_sec) * 1000000000ULL + BPF_CORE_READ(i, i_mtime.tv_nsec);
	} else {
		struct inode___old *i = (void *)ino;
		*ctime = BPF_CORE_READ(i, i_ctime.tv_sec) * 1000000000ULL + BPF_CORE_READ(i, i_ctime.tv_nsec);
		*mtime = BPF_CORE_READ(i, i_mtime.tv_sec) * 1000000000ULL + BPF_CORE_READ(i, i_mtime.tv_nsec);
	}
}

/* struct andon_exec_info is only reached through a cast, so it has no BTF of its own;
 * this anchor puts it in the object's BTF for tests/unit/test_abi.py. libbpf skips the
 * unknown section, so nothing is loaded for it. */
struct andon_exec_info __andon_btf_exec_info SEC(".andon.btf") __attribute__((used));

#define OVERLAYFS_SUPER_MAGIC 0x794c7630

/* Falco's exe flags: a memfd executable, and which overlayfs layer the exe lives on. */
static __always_inline __u32 exe_flags(struct file *exe, __u32 euid, __u32 egid)
{
	__u32 flags = 0;
	struct inode *ino = BPF_CORE_READ(exe, f_inode);
	char name[8] = {};

	bpf_probe_read_kernel_str(name, sizeof(name), BPF_CORE_READ(exe, f_path.dentry, d_name.name));
	if (name[0] == 'm' && name[1] == 'e' && name[2] == 'm' && name[3] == 'f' && name[4] == 'd' && name[5] == ':')
		flags |= ANDON_EXE_FROM_MEMFD;

	if (BPF_CORE_READ(ino, i_sb, s_magic) == OVERLAYFS_SUPER_MAGIC) {
		/* struct ovl_inode embeds the vfs inode; __upperdentry follows it */
		struct ovl_inode *oi = container_of(ino, struct ovl_inode, vfs_inode);
		struct dentry *upper = BPF_CORE_READ(oi, __upperdentry);
		flags |= upper ? ANDON_EXE_UPPER_LAYER : ANDON_EXE_LOWER_LAYER;
	}

	/* writable by the user who runs it: owner, group or other write bit (no ACLs) */
	umode_t mode = BPF_CORE_READ(ino, i_mode);
	__u32 iuid = BPF_CORE_READ(ino, i_uid.val);
	__u32 igid = BPF_CORE_READ(ino, i_gid.val);
	if (euid == 0 || (mode & 0002) || (iuid == euid && (mode & 0200)) || (igid == egid && (mode & 0020)))
		flags |= ANDON_EXE_WRITABLE;
	return flags;
}

/* The leaf name of a cgroup: enough to recognise docker-<id>.scope, libpod-<id>, crio-<id>... */
static __always_inline __u32 put_cgroup_leaf(struct scratch *s, __u32 off, struct cgroup *cg)
{
	const char *name = BPF_CORE_READ(cg, kn, name);
	return andon__put_kernel_str(s, off, name);
}

/* task->thread_pid->numbers[level]: the pid and the pid namespace the task sees itself in */
static __always_inline void pid_ns_view(struct task_struct *task, __u32 *vpid, __u32 *pidns)
{
	struct pid *pid = BPF_CORE_READ(task, thread_pid);
	unsigned int level = BPF_CORE_READ(pid, level);
	struct upid up = {};

	bpf_probe_read_kernel(&up, sizeof(up), &pid->numbers[level & 31]);
	*vpid = up.nr;
	*pidns = BPF_CORE_READ(up.ns, ns.inum);
}

SEC("raw_tp/sched_process_exec")
int sched_process_exec(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	struct linux_binprm *bprm = (struct linux_binprm *)ctx->args[2];
	struct scratch *s = andon__scratch();

	if (!s)
		return 0;
	andon__header(&s->ev, ANDON_EV_EXEC, 0);
	if (s->ev.pid == cfg.self_tgid)
		return 0;
	s->ev.ret = 0;
	s->ev.args[0] = (__u32)ctx->args[1]; /* old pid: the thread that called exec */
	s->ev.flags |= ANDON_F_EXEC_INFO;

	struct andon_exec_info *x = (struct andon_exec_info *)s->ev.data;
	const struct cred *cred = BPF_CORE_READ(task, cred);
	x->cap_effective = read_cap(&cred->cap_effective);
	x->cap_permitted = read_cap(&cred->cap_permitted);
	x->ruid = BPF_CORE_READ(cred, uid.val);
	x->rgid = BPF_CORE_READ(cred, gid.val);
	x->start_time = BPF_CORE_READ(task, start_time);
	x->ppid = BPF_CORE_READ(task, real_parent, tgid);
	if (bpf_core_field_exists(task->loginuid))
		x->loginuid = BPF_CORE_READ(task, loginuid.val);
	else
		x->loginuid = 0xffffffff;

	struct tty_struct *tty = BPF_CORE_READ(task, signal, tty);
	x->tty = 0;
	if (tty) {
		int index = BPF_CORE_READ(tty, index);
		int major = BPF_CORE_READ(tty, driver, major);
		int minor = BPF_CORE_READ(tty, driver, minor_start);
		x->tty = ((__u32)major << 20) | (__u32)(minor + index); /* MKDEV */
	}
	/* session id: signal->pids[PIDTYPE_SID]->numbers[0].nr */
	struct pid *sidp = BPF_CORE_READ(task, signal, pids[3]);
	x->sid = BPF_CORE_READ(sidp, numbers[0].nr);
	pid_ns_view(task, &x->vpid, &x->pidns);
	x->mntns = BPF_CORE_READ(task, nsproxy, mnt_ns, ns.inum);
	x->netns = BPF_CORE_READ(task, nsproxy, net_ns, ns.inum);

	struct file *exe = BPF_CORE_READ(task, mm, exe_file);
	x->exe_flags = 0;
	x->exe_ctime = 0;
	x->exe_mtime = 0;
	if (exe) {
		x->exe_flags = exe_flags(exe, s->ev.uid, s->ev.gid);
		inode_times(BPF_CORE_READ(exe, f_inode), &x->exe_ctime, &x->exe_mtime);
	}

	__u32 off = sizeof(struct andon_exec_info);
	/* 1: exepath, the exe file's path as the kernel resolved it */
	if (exe)
		off = andon__put_path(s, off, &exe->f_path);
	else
		off = andon__put_kernel_str(s, off, NULL);
	/* 2: filename as passed to exec (a script, not its interpreter) */
	off = andon__put_kernel_str(s, off, BPF_CORE_READ(bprm, filename));
	/* 3: cwd */
	struct fs_struct *fs = BPF_CORE_READ(task, fs);
	off = andon__put_path(s, off, &fs->pwd);
	/* 4: cgroup leaf on the v1 hierarchy the loader chose, 5: on the default (v2) one */
	__u32 ss = cfg.cgroup_subsys;
	if (ss < 16) {
		struct css_set *cgs = BPF_CORE_READ(task, cgroups);
		struct cgroup_subsys_state *css = NULL;
		bpf_probe_read_kernel(&css, sizeof(css), &cgs->subsys[ss & 15]);
		off = put_cgroup_leaf(s, off, BPF_CORE_READ(css, cgroup));
	} else {
		off = andon__put_kernel_str(s, off, NULL);
	}
	off = put_cgroup_leaf(s, off, BPF_CORE_READ(task, cgroups, dfl_cgrp));

	/* 6: argv, NUL-separated, from the new mm */
	unsigned long a0 = BPF_CORE_READ(task, mm, arg_start);
	unsigned long a1 = BPF_CORE_READ(task, mm, arg_end);
	__u32 alen = a1 > a0 ? a1 - a0 : 0;
	if (alen > ANDON_ARGV_MAX) {
		alen = ANDON_ARGV_MAX;
		s->ev.flags |= ANDON_F_TRUNCATED;
	}
	x->argv_len = 0;
	if (off <= DATA_OFF_MASK && alen > 0) {
		if (bpf_probe_read_user(&s->ev.data[BOUND(off, DATA_OFF_MASK)], BOUND(alen, 4095), (void *)a0) == 0) {
			x->argv_len = alen;
			off += alen;
		} else {
			andon__count(ANDON_STAT_ERRORS);
		}
	}
	s->ev.nstr++;
	andon__emit(s, off);
	return 0;
}

SEC("raw_tp/sched_process_fork")
int sched_process_fork(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	struct scratch *s = andon__scratch();

	if (!s)
		return 0;
	andon__header(&s->ev, ANDON_EV_FORK, 0);
	if (s->ev.pid == cfg.self_tgid)
		return 0;
	s->ev.ret = 0;
	s->ev.args[0] = BPF_CORE_READ(child, pid);   /* child tid */
	s->ev.args[1] = BPF_CORE_READ(child, tgid);  /* child pid: equal to ours for a thread */
	s->ev.args[2] = BPF_CORE_READ(child, start_time);
	andon__emit(s, 0);
	return 0;
}

SEC("raw_tp/sched_process_exit")
int sched_process_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	struct scratch *s = andon__scratch();

	if (!s)
		return 0;
	andon__header(&s->ev, ANDON_EV_EXIT, 0);
	if (s->ev.pid == cfg.self_tgid)
		return 0;
	s->ev.ret = BPF_CORE_READ(task, exit_code); /* wait status: code << 8 | signal */
	/* 1 when this was the last thread of the process */
	s->ev.args[0] = BPF_CORE_READ(task, signal, live.counter) == 0;
	s->ev.args[1] = BPF_CORE_READ(task, real_parent, tgid);
	andon__emit(s, 0);
	return 0;
}
