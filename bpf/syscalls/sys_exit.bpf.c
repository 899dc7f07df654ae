/* SPDX-License-Identifier: Apache-2.0 */
/*
 * One program on raw_tp/sys_exit for every traced syscall, filtered in the kernel by
 * syscall number. At sys_exit the saved pt_regs still hold the six arguments (the
 * syscall did not clobber them: x86_64 passes them by value), and user buffers such as
 * paths are still mapped, so one hook gives arguments and result together and we need
 * no per-thread enter/exit map. What to copy for each syscall comes from the map
 * sc_specs, filled by the loader from src/andon/events/syscalls.py.
 *
 * Built twice: sys_exit.bpf.o (raw_tp, works wherever raw tracepoints do) and
 * sys_exit_btf.bpf.o (tp_btf, cheaper reads); the loader tries tp_btf first.
 */
#include "../include/andon.h"
#include "../include/fdsock.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, ANDON_NR_MAX);
	__type(key, __u32);
	__type(value, struct andon_sc_spec);
} sc_specs SEC(".maps");

/* i386 syscall number -> x86_64 number + 1 (0: not traced), filled by the loader */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, ANDON_NR_MAX);
	__type(key, __u32);
	__type(value, __u16);
} sc_ia32 SEC(".maps");

#define TS_COMPAT 0x0002 /* arch/x86/include/asm/thread_info.h: 32-bit syscall active */

#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define UNIX_PATH_MAX 108

/* Wire structs used here only through casts get no BTF of their own; these anchors put
 * them in the object's BTF for tests/unit/test_abi.py. libbpf skips the unknown section,
 * so nothing is loaded for them. */
struct andon_sock __andon_btf_sock SEC(".andon.btf") __attribute__((used));

#define NR_EXECVE 59
#define NR_EXECVEAT 322

static __always_inline __u64 reg_arg(struct pt_regs *r, int i)
{
	switch (i) {
	case 0: return r->di;
	case 1: return r->si;
	case 2: return r->dx;
	case 3: return r->r10;
	case 4: return r->r8;
	case 5: return r->r9;
	}
	return 0;
}

static __always_inline void sock_tuple(struct socket *so, struct andon_sock *t)
{
	struct sock *sk = BPF_CORE_READ(so, sk);

	t->type = BPF_CORE_READ(so, type);
	if (!sk)
		return;
	t->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	t->proto = BPF_CORE_READ(sk, sk_protocol);
	t->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	t->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (t->family == AF_INET) {
		bpf_probe_read_kernel(t->saddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_probe_read_kernel(t->daddr, 4, &sk->__sk_common.skc_daddr);
	} else if (t->family == AF_INET6) {
		bpf_probe_read_kernel(t->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_probe_read_kernel(t->daddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
}

/*
 * A struct sockaddr from user memory: an inet address fills the tuple's remote side (it
 * is the only peer an unconnected UDP sendto has), or the local side for bind; a unix
 * path is appended as a string.
 */
static __always_inline __u32 put_sockaddr(struct scratch *s, __u32 off, struct andon_sock *t,
					  const void *uaddr, __u32 len, int local)
{
	__u16 family = 0;
	__u16 *port = local ? &t->sport : &t->dport;
	__u8 *addr = local ? t->saddr : t->daddr;

	if (!uaddr || len < 2)
		return off;
	bpf_probe_read_user(&family, sizeof(family), uaddr);
	/* bind: the kernel socket, read first, already holds the bound address and the port
	 * it chose for port 0; the argument only stands in when that read found nothing */
	if (local && t->family && family != AF_UNIX)
		return off;
	if (family == AF_INET && len >= 8) {
		struct sockaddr_in sin = {};
		bpf_probe_read_user(&sin, sizeof(sin), uaddr);
		*port = bpf_ntohs(sin.sin_port);
		__builtin_memset(addr, 0, 16);
		__builtin_memcpy(addr, &sin.sin_addr, 4);
		t->from_arg = 1;
		if (!t->family)
			t->family = AF_INET;
	} else if (family == AF_INET6 && len >= 24) {
		struct sockaddr_in6 sin6 = {};
		bpf_probe_read_user(&sin6, sizeof(sin6), uaddr);
		*port = bpf_ntohs(sin6.sin6_port);
		__builtin_memcpy(addr, &sin6.sin6_addr, 16);
		t->from_arg = 1;
		if (!t->family)
			t->family = AF_INET6;
	} else if (family == AF_UNIX) {
		if (!t->family)
			t->family = AF_UNIX;
		t->from_arg = 1;
		/* sun_path is the len - 2 bytes the caller passed, and neither kind of name needs
		 * a NUL inside them (unix(7)): never read past len, or we copy the caller's stack */
		__u32 plen = len - 2;
		if (plen > UNIX_PATH_MAX)
			plen = UNIX_PATH_MAX;
		if (off > DATA_OFF_MASK)
			return off;
		char first = 0;
		bpf_probe_read_user(&first, 1, uaddr + 2);
		long n;
		if (first == 0 && plen > 1) {
			/* abstract socket: shown as @name, as ss and Falco do; an embedded NUL ends it */
			s->ev.data[BOUND(off, DATA_OFF_MASK)] = '@';
			off += 1;
			n = bpf_probe_read_user_str(&s->ev.data[BOUND(off, DATA_OFF_MASK)], BOUND(plen - 1, 127) + 1, uaddr + 3);
		} else {
			n = bpf_probe_read_user_str(&s->ev.data[BOUND(off, DATA_OFF_MASK)], BOUND(plen, 127) + 1, uaddr + 2);
		}
		if (n <= 0) {
			s->ev.data[BOUND(off, DATA_OFF_MASK)] = 0;
			n = 1;
			andon__count(ANDON_STAT_ERRORS);
		}
		s->ev.nstr++;
		return off + n;
	}
	return off;
}

/* Header, arguments and the small per-syscall extras, into a record in the ring or in scratch. */
static __always_inline void fill_syscall(struct andon_event *e, struct task_struct *task, struct pt_regs *r,
					 struct andon_sc_spec *sp, long nr, long ret, int ia32)
{
	andon__header_of(e, task, ANDON_EV_SYSCALL, nr);
	if (ia32)
		e->flags |= ANDON_F_IA32;
	e->ret = ret;
	e->args[0] = r->di;
	e->args[1] = r->si;
	e->args[2] = r->dx;
	e->args[3] = r->r10;
	e->args[4] = r->r8;
	e->args[5] = r->r9;
	if (sp->how != ANDON_ARG_NONE) {
		/* openat2: flags, mode and resolve live in struct open_how; they replace args 2..4 */
		struct open_how how = {};
		bpf_probe_read_user(&how, sizeof(how), (void *)reg_arg(r, sp->how));
		e->args[2] = how.flags;
		e->args[3] = how.mode;
		e->args[4] = how.resolve;
	}
	if (sp->fdpair != ANDON_ARG_NONE && ret == 0) {
		int fds[2] = {-1, -1};
		bpf_probe_read_user(fds, sizeof(fds), (void *)reg_arg(r, sp->fdpair));
		e->args[4] = (__u32)fds[0];
		e->args[5] = (__u32)fds[1];
	}
}

#ifdef ANDON_BTF
SEC("tp_btf/sys_exit")
#else
SEC("raw_tp/sys_exit")
#endif
int BPF_PROG(sys_exit, struct pt_regs *regs, long ret)
{
#ifdef ANDON_BTF
	long nr = regs->orig_ax;
#else
	long nr = BPF_CORE_READ(regs, orig_ax);
#endif

	if (nr < 0 || nr >= ANDON_NR_MAX)
		return 0;
	/* int $0x80 from a 64-bit task: same registers, i386 numbers. Without this a
	 * process could hide an open() from us by making it the 32-bit way. */
	struct task_struct *cur = andon__current_task();
#ifdef ANDON_BTF
	int ia32 = cur->thread_info.status & TS_COMPAT;
#else
	int ia32 = BPF_CORE_READ(cur, thread_info.status) & TS_COMPAT;
#endif
	if (ia32) {
		__u32 k32 = nr;
		__u16 *m = bpf_map_lookup_elem(&sc_ia32, &k32);
		if (!m || !*m)
			return 0;
		nr = *m - 1;
	}
	__u32 key = nr;
	struct andon_sc_spec *sp = bpf_map_lookup_elem(&sc_specs, &key);
	if (!sp || !sp->enabled)
		return 0;
	/* a successful exec is reported by sched_process_exec; its old arguments are gone */
	if ((nr == NR_EXECVE || nr == NR_EXECVEAT) && ret == 0)
		return 0;
#ifdef ANDON_BTF
	if ((__u32)cur->tgid == cfg.self_tgid)
		return 0;
#else
	if ((__u32)(bpf_get_current_pid_tgid() >> 32) == cfg.self_tgid)
		return 0;
#endif

	struct pt_regs r;
#ifdef ANDON_BTF
	r.di = regs->di;
	r.si = regs->si;
	r.dx = regs->dx;
	r.r10 = regs->r10;
	r.r8 = regs->r8;
	r.r9 = regs->r9;
	if (ia32) {
		r.bx = regs->bx;
		r.cx = regs->cx;
		r.bp = regs->bp;
	}
#else
	bpf_probe_read_kernel(&r, sizeof(r), regs);
#endif
	if (ia32) {
		/* i386 passes args in ebx, ecx, edx, esi, edi, ebp; the kernel uses the low 32 bits */
		__u64 a0 = (__u32)r.bx, a1 = (__u32)r.cx, a2 = (__u32)r.dx;
		__u64 a3 = (__u32)r.si, a4 = (__u32)r.di, a5 = (__u32)r.bp;
		r.di = a0;
		r.si = a1;
		r.dx = a2;
		r.r10 = a3;
		r.r8 = a4;
		r.r9 = a5;
	}

	/*
	 * Fast path, for the records that are nearly all of them (at most one path, no
	 * socket): build straight into a reserved one-slot record. A path that may not
	 * fit the slot discards it and goes the long way, through the scratch record.
	 */
	if (sp->sock_fd == ANDON_ARG_NONE && sp->sa == ANDON_ARG_NONE && sp->msghdr == ANDON_ARG_NONE &&
	    sp->str1 == ANDON_ARG_NONE) {
		struct andon_event *e = bpf_ringbuf_reserve(&events, ANDON_REC_SMALL, 0);
		if (!e) {
			andon__count(ANDON_STAT_DROPS);
			return 0;
		}
		fill_syscall(e, cur, &r, sp, nr, ret, ia32);
		e->size = ANDON_REC_SMALL;
		if (sp->str0 != ANDON_ARG_NONE) {
			const void *src = (const void *)reg_arg(&r, sp->str0);
			long n = bpf_probe_read_user_str(e->data, ANDON_DATA_SMALL, src);
			if (n == ANDON_DATA_SMALL) {
				/* filled the slot: maybe longer than it; a discarded record costs the
				 * reader nothing but a skip */
				bpf_ringbuf_discard(e, BPF_RB_NO_WAKEUP);
				goto slow;
			}
			if (n <= 0) {
				e->data[0] = 0;
				if (src)
					andon__count(ANDON_STAT_ERRORS);
			}
			e->nstr = 1;
		}
		bpf_ringbuf_submit(e, andon__wakeup_flags());
		andon__count(ANDON_STAT_EVENTS);
		return 0;
	}
slow:;
	struct scratch *s = andon__scratch();
	if (!s)
		return 0;
	fill_syscall(&s->ev, cur, &r, sp, nr, ret, ia32);

	__u32 off = 0;
	struct andon_sock *t = (struct andon_sock *)s->ev.data;
	if (sp->sock_fd != ANDON_ARG_NONE || sp->sa != ANDON_ARG_NONE || sp->msghdr != ANDON_ARG_NONE) {
		__builtin_memset(t, 0, sizeof(*t));
		s->ev.flags |= ANDON_F_SOCK;
		off = sizeof(*t);
		if (sp->sock_fd != ANDON_ARG_NONE) {
			long fd = sp->sock_fd == ANDON_ARG_RET ? ret : (long)(int)reg_arg(&r, sp->sock_fd);
			struct socket *so = andon_fd_socket(fd);
			if (so)
				sock_tuple(so, t);
		}
		if (sp->sa != ANDON_ARG_NONE) {
			__u32 len = sp->salen != ANDON_ARG_NONE ? reg_arg(&r, sp->salen) : 128;
			off = put_sockaddr(s, off, t, (void *)reg_arg(&r, sp->sa), len, sp->sa_local);
		} else if (sp->msghdr != ANDON_ARG_NONE) {
			void *mp = (void *)reg_arg(&r, sp->msghdr);
			if (ia32) {
				/* struct compat_msghdr: a 32-bit msg_name, then msg_namelen */
				__u32 cm[2] = {};
				bpf_probe_read_user(cm, sizeof(cm), mp);
				off = put_sockaddr(s, off, t, (void *)(unsigned long)cm[0], cm[1], 0);
			} else {
				struct user_msghdr mh = {};
				bpf_probe_read_user(&mh, sizeof(mh), mp);
				off = put_sockaddr(s, off, t, mh.msg_name, mh.msg_namelen, 0);
			}
		}
	}
	if (sp->str0 != ANDON_ARG_NONE)
		off = andon__put_user_str(s, off, (void *)reg_arg(&r, sp->str0));
	if (sp->str1 != ANDON_ARG_NONE)
		off = andon__put_user_str(s, off, (void *)reg_arg(&r, sp->str1));
	andon__emit(s, off);
	return 0;
}
