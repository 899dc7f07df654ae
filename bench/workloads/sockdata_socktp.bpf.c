/* SPDX-License-Identifier: Apache-2.0 */
/*
 * An experiment, not a sensor: the socket data sensor's own body (bpf/net/sockdata.bpf.c,
 * included whole) driven from other hooks, to measure what moving off the every-syscall
 * sys_exit hook would save (bench/sock_hook.py --socktp, bench/proto_load.py sensor-socktp).
 *
 *   data       tp_btf/sock_send_length and tp_btf/sock_recv_length: they fire inside
 *              sock_sendmsg/sock_recvmsg, so only socket I/O runs a program. The syscall's
 *              number and arguments come from the task's saved registers
 *              (bpf_task_pt_regs), then the real sd__on_data runs on them.
 *   lifecycle  per-syscall tracepoints syscalls/sys_exit_{close,connect,accept,accept4,
 *              execve,execveat,close_range}: the kernel's syscall-event probe tests a bit
 *              per syscall number in C, so other syscalls run no BPF at all.
 *
 * What it leaves out, and why this is a measurement and not yet the redesign:
 * sendmmsg/recvmmsg (the tracepoint fires once per message and does not say which),
 * the peer address of a UDP recvfrom/recvmsg (the kernel copies it to the user after
 * the tracepoint fires), MSG_PEEK reads (skipped here), and kernel threads and in-kernel
 * socket users inside another syscall (skipped: the number must be one of the data
 * syscalls, and sd__on_data checks that the fd's socket is this one).
 */
#include "../../bpf/net/sockdata.bpf.c"

#define SDX_MSG_PEEK 2
#define SDX_PF_KTHREAD 0x00200000

static __always_inline int sdx__io(struct sock *sk, int ret, int flags, int recv)
{
	if (ret <= 0 || (recv && (flags & SDX_MSG_PEEK)))
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!sd__traced(pid_tgid))
		return 0;
	struct task_struct *t = bpf_get_current_task_btf();
	if ((t->flags & SDX_PF_KTHREAD) || (t->thread_info.status & TS_COMPAT))
		return 0;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(t);
	if (!regs)
		return 0;
	long nr = regs->orig_ax;
	switch (nr) {
	case NR_READ: case NR_WRITE: case NR_READV: case NR_WRITEV: case NR_SENDTO: case NR_RECVFROM:
	case NR_SENDMSG: case NR_RECVMSG: case NR_PREADV2: case NR_PWRITEV2:
		break;
	default: /* sendfile, splice, io_uring, the mmsg calls, a kernel socket inside another call */
		return 0;
	}
	struct sdc_args r = {.a = {regs->di, regs->si, regs->dx, regs->r10, regs->r8, regs->r9}};
	sd__on_data(nr, &r, ret, pid_tgid, 1);
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(sdx_send, struct sock *sk, int ret, int flags)
{
	return sdx__io(sk, ret, flags, 0);
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(sdx_recv, struct sock *sk, int ret, int flags)
{
	return sdx__io(sk, ret, flags, 1);
}

/* the lifecycle syscalls: their exit, with the arguments from the saved registers */
static __always_inline int sdx__exit(struct syscall_trace_exit *ctx)
{
	long ret = ctx->ret;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	if (!regs)
		return 0;
	return sd__sys_exit(regs, ret, 1);
}

/* one program per lifecycle syscall, the same body */
#define SDX_EXIT(call)                                                  \
	SEC("tracepoint/syscalls/sys_exit_" #call)                      \
	int sdx_##call(struct syscall_trace_exit *ctx) { return sdx__exit(ctx); }

SDX_EXIT(close)
SDX_EXIT(connect)
SDX_EXIT(accept)
SDX_EXIT(accept4)
SDX_EXIT(execve)
SDX_EXIT(execveat)
SDX_EXIT(close_range)
