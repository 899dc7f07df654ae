/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Feature probes for `andon doctor`: one tiny program per kernel feature.
 *
 * src/andon/bpf/features.py opens this object once per probe, turns autoload on for the
 * one program under test, loads, attaches, triggers, reads probe_hits[0], detaches and
 * closes. So a feature the kernel lacks fails its own probe and hides no other one, and
 * a map only one probe needs (probe_ring) is created only for that probe.
 *
 * Every program counts into probe_hits[0] when it ran (and, for helpers, when the helper
 * returned success): "attached" is not enough, the hook must have fired. Programs that
 * sit on network or cgroup hooks always let the packet or the connect through.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL"; /* bpf_override_return, bpf_send_signal, probe_write_user are GPL-only */

#define TC_ACT_OK 0
#define ENODATA 61

/* Written by the loader before load: which thread the helper probes may act on. */
const volatile struct {
	__u32 tgid;
	__u32 tid;
	__u64 write_addr; /* a buffer in the prober's own memory, for bpf_probe_write_user */
} probe_cfg = {};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} probe_hits SEC(".maps");

/* Only created for the ringbuf probe (the loader turns autocreate off otherwise):
 * on a kernel without ring buffers this map alone would fail every other load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} probe_ring SEC(".maps");

static __always_inline void hit(void)
{
	__u32 zero = 0;
	__u64 *v = bpf_map_lookup_elem(&probe_hits, &zero);
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline bool is_prober_thread(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	return (id >> 32) == probe_cfg.tgid && (__u32)id == probe_cfg.tid;
}

/* --- attach points ------------------------------------------------------------------ */

/* needs tracefs for the event id */
SEC("tracepoint/syscalls/sys_enter_getpid")
int tracepoint__syscalls__sys_enter_getpid(void *ctx)
{
	hit();
	return 0;
}

/* the sensor core's hook type: needs no tracefs */
SEC("raw_tp/sys_enter")
int raw_tp__sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	hit();
	return 0;
}

/* BTF-typed raw tracepoint */
SEC("tp_btf/sys_enter")
int BPF_PROG(tp_btf__sys_enter, struct pt_regs *regs, long id)
{
	hit();
	return 0;
}

/* attached by the loader to libc's getpid in the prober's own process */
SEC("uprobe")
int uprobe__getpid(struct pt_regs *ctx)
{
	hit();
	return 0;
}

SEC("uretprobe")
int uretprobe__getpid(struct pt_regs *ctx)
{
	hit();
	return 0;
}

/* attached by the loader to a software cpu-clock event on the prober's thread */
SEC("perf_event")
int perf_event__cpu_clock(struct bpf_perf_event_data *ctx)
{
	hit();
	return 0;
}

SEC("xdp")
int xdp__pass(struct xdp_md *ctx)
{
	hit();
	return XDP_PASS;
}

SEC("tc")
int tc__ingress(struct __sk_buff *skb)
{
	hit();
	return TC_ACT_OK;
}

/* attached to the cgroup v2 root, so it sees every socket on the machine: always allow */
SEC("cgroup_skb/egress")
int cgroup_skb__egress(struct __sk_buff *skb)
{
	hit();
	return 1;
}

SEC("cgroup/connect4")
int cgroup__connect4(struct bpf_sock_addr *ctx)
{
	hit();
	return 1;
}

/* the loader picks the kernel function (do_sys_openat2 where it exists) */
SEC("kprobe")
int kprobe__open(struct pt_regs *ctx)
{
	hit();
	return 0;
}

/* the loader may retarget this with bpf_program__set_attach_target */
SEC("fentry/do_sys_openat2")
int BPF_PROG(fentry__open)
{
	hit();
	return 0;
}

/* an LSM hook that only observes: 0 means allow */
SEC("lsm/file_open")
int BPF_PROG(lsm__file_open, struct file *file)
{
	hit();
	return 0;
}

/* --- maps and helpers --------------------------------------------------------------- */

SEC("raw_tp/sys_enter")
int ringbuf__output(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 v = bpf_get_current_pid_tgid();

	if (bpf_ringbuf_output(&probe_ring, &v, sizeof(v), 0) == 0)
		hit();
	return 0;
}

/* CO-RE relocated reads through bpf_probe_read_kernel, as every sensor does; a kernel in
 * lockdown=confidentiality refuses this helper */
SEC("raw_tp/sys_enter")
int probe_read_kernel(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	if (BPF_CORE_READ(task, tgid) == (bpf_get_current_pid_tgid() >> 32))
		hit();
	return 0;
}

/* signal 0 checks permission and delivers nothing (group_send_sig_info skips sig 0) */
SEC("raw_tp/sys_enter")
int send_signal(struct bpf_raw_tracepoint_args *ctx)
{
	if (!is_prober_thread())
		return 0;
	if (bpf_send_signal(0) == 0)
		hit();
	return 0;
}

/* writes 8 bytes into a buffer the prober owns; lockdown=integrity refuses this helper */
SEC("raw_tp/sys_enter")
int probe_write_user(struct bpf_raw_tracepoint_args *ctx)
{
	char msg[8] = "andon-ok";

	if (!is_prober_thread() || !probe_cfg.write_addr)
		return 0;
	if (bpf_probe_write_user((void *)probe_cfg.write_addr, msg, sizeof(msg)) == 0)
		hit();
	return 0;
}

/* Syscall entry points are ALLOW_ERROR_INJECTION(ERRNO); ksyscall resolves the arch
 * prefix (__x64_sys_getppid, __arm64_sys_getppid, ...). Only the prober's thread is
 * affected: its getppid() returns -ENODATA while this is attached. */
SEC("ksyscall/getppid")
int ksyscall__getppid(struct pt_regs *ctx)
{
	if (!is_prober_thread())
		return 0;
	bpf_override_return(ctx, -ENODATA);
	hit();
	return 0;
}
