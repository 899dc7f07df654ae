/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The wire ABI between andon's BPF programs and its Python decoder, and nothing else.
 *
 * Every record in the event ring is a whole number of 256-byte slots: an 8-byte ring
 * header followed by a struct andon_event whose `size` says how many bytes follow the
 * header (248 for the common one-slot record, 256*k-8 for a k-slot record). Keeping the
 * stride fixed lets the consumer decode a run of one-slot records as one numpy array.
 *
 * src/andon/events/schema.py mirrors these structs field by field; tests/kernel
 * compares that mirror with the BTF of the built objects (tests/unit/test_abi.py).
 */
#ifndef ANDON_ABI_EVENTS_H
#define ANDON_ABI_EVENTS_H

#define ANDON_SLOT 256                 /* ring stride, bytes */
#define ANDON_REC_SMALL (ANDON_SLOT - 8) /* record bytes in a one-slot record */
#define ANDON_HDR_SIZE 112             /* offset of data[] in struct andon_event */
#define ANDON_DATA_SMALL (ANDON_REC_SMALL - ANDON_HDR_SIZE) /* 136 */
#define ANDON_DATA_MAX 16000           /* largest data[] of a multi-slot record */
#define ANDON_REC_MAX (64 * ANDON_SLOT - 8) /* largest record: 64 slots */
#define ANDON_STR_MAX 4096             /* PATH_MAX: longest string we copy */
#define ANDON_ARGV_MAX 4095            /* bytes of argv copied at exec */
#define ANDON_CGROUP_MAX 128           /* bytes of a cgroup leaf name */
#define ANDON_NR_MAX 512               /* syscall numbers we can filter on */

/* event types: field `type` */
enum andon_event_type {
	ANDON_EV_SYSCALL = 1, /* a traced syscall returned; `nr` says which */
	ANDON_EV_EXEC = 2,    /* a successful execve/execveat (sched_process_exec) */
	ANDON_EV_FORK = 3,    /* a new task (sched_process_fork) */
	ANDON_EV_EXIT = 4,    /* a task exited (sched_process_exit) */
};

/* flags: field `flags` */
#define ANDON_F_TRUNCATED 0x01   /* a string or argv was cut at its bound */
#define ANDON_F_SOCK 0x02        /* data[] starts with a struct andon_sock */
#define ANDON_F_EXEC_INFO 0x04   /* data[] starts with a struct andon_exec_info */
#define ANDON_F_IA32 0x08        /* an i386 syscall (int $0x80) from a 64-bit task; `nr` is
                                  * already the x86_64 number of the same call */

struct andon_event {
	/* field 0: ts (u64) boot-time ns, bpf_ktime_get_boot_ns() */
	__u64 ts;
	/* field 1: cgroup_id (u64) cgroup v2 id of the task */
	__u64 cgroup_id;
	/* field 2: ret (s64) syscall return value; for exit the raw exit code */
	__s64 ret;
	/* field 3: args (u64[6]) raw syscall arguments; per type for the others */
	__u64 args[6];
	/* field 4: pid (u32) thread group id */
	__u32 pid;
	/* field 5: tid (u32) thread id */
	__u32 tid;
	/* field 6: uid (u32) effective uid */
	__u32 uid;
	/* field 7: gid (u32) effective gid */
	__u32 gid;
	/* field 8: type (u16) enum andon_event_type */
	__u16 type;
	/* field 9: nr (u16) syscall number (x86_64) */
	__u16 nr;
	/* field 10: size (u16) bytes of this record, header included */
	__u16 size;
	/* field 11: nstr (u8) number of NUL-terminated strings in data[] */
	__u8 nstr;
	/* field 12: flags (u8) ANDON_F_* */
	__u8 flags;
	/* field 13: comm (char[16]) task->comm */
	char comm[16];
	/* field 14: data (u8[]) optional struct (see flags), then nstr strings */
	__u8 data[ANDON_DATA_SMALL];
};

/* Socket tuple read from the kernel socket behind an fd, or from a sockaddr argument.
 * Ports in host order. IPv4 addresses sit in the first 4 bytes of saddr/daddr. */
struct andon_sock {
	__u16 family;     /* AF_INET, AF_INET6, AF_UNIX, ... */
	__u16 type;       /* SOCK_STREAM, SOCK_DGRAM, ... */
	__u16 proto;      /* IPPROTO_TCP, IPPROTO_UDP, ... */
	__u16 sport;      /* local port */
	__u16 dport;      /* remote port */
	__u16 from_arg;   /* 1: daddr/dport came from the syscall's sockaddr argument */
	__u8 saddr[16];   /* local address */
	__u8 daddr[16];   /* remote address */
};

/* Process facts read at exec, in front of the strings of an ANDON_EV_EXEC record.
 * Strings that follow, in order: exepath, filename, cwd, cgroup (v1 leaf), cgroup2 (leaf), argv. */
struct andon_exec_info {
	__u64 cap_effective;
	__u64 cap_permitted;
	__u64 start_time;    /* task->start_time, ns since boot */
	__u64 exe_ctime;     /* exe inode ctime, ns since epoch */
	__u64 exe_mtime;     /* exe inode mtime, ns since epoch */
	__u32 ppid;
	__u32 ruid;          /* real uid */
	__u32 rgid;
	__u32 loginuid;      /* audit uid, 4294967295 when unset */
	__u32 tty;           /* encoded dev_t of the controlling tty, 0 none */
	__u32 sid;           /* session id */
	__u32 vpid;          /* pid in its own pid namespace */
	__u32 pidns;         /* namespace inode numbers */
	__u32 mntns;
	__u32 netns;
	__u32 exe_flags;     /* ANDON_EXE_* */
	__u32 argv_len;      /* bytes of argv (NUL-separated) */
};

#define ANDON_EXE_FROM_MEMFD 0x1
#define ANDON_EXE_UPPER_LAYER 0x2
#define ANDON_EXE_LOWER_LAYER 0x4
#define ANDON_EXE_WRITABLE 0x8

/* What the syscall dispatcher captures for one syscall number (map sc_specs). */
#define ANDON_ARG_NONE 0xff
#define ANDON_ARG_RET 6     /* "the return value" where an fd index is expected */

struct andon_sc_spec {
	__u8 enabled;     /* 1: emit an event when this syscall returns */
	__u8 str0;        /* index of a user string argument, or ANDON_ARG_NONE */
	__u8 str1;        /* a second one (rename, link, symlink) */
	__u8 sock_fd;     /* index of a socket fd arg to read the tuple from, or ANDON_ARG_RET */
	__u8 sa;          /* index of a struct sockaddr * argument */
	__u8 salen;       /* index of its length argument (by value) */
	__u8 msghdr;      /* index of a struct msghdr * argument (sendmsg) */
	__u8 how;         /* index of a struct open_how * argument (openat2) */
	__u8 fdpair;      /* index of an int[2] out-argument (pipe, socketpair): into args[4..5] */
	__u8 sa_local;    /* 1: the sockaddr names our own side (bind), not the peer */
	__u8 pad[6];
};

/* Load-time settings (.rodata of each object). */
struct andon_config {
	__u32 self_tgid;      /* the agent's own pid: never traced */
	__u32 wakeup_bytes;   /* wake the consumer when this much is pending; 0: every event */
	__u32 cgroup_subsys;  /* v1 subsystem index whose cgroup leaf exec reports; >= 16: none */
	__u32 pad;
};

/* Counters in the percpu array `stats`, by index. */
enum andon_stat {
	ANDON_STAT_EVENTS = 0,   /* records submitted */
	ANDON_STAT_DROPS = 1,    /* records lost: ring full */
	ANDON_STAT_TRUNC = 2,    /* records with a truncated string */
	ANDON_STAT_ERRORS = 3,   /* reads of kernel or user memory that failed */
	ANDON_STAT_MAX = 8,
};

#endif
