/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Socket data capture: the bytes that TCP, UDP and unix stream sockets of every process read and
 * write, per connection, with connection open/close records, for the protocol parsers.
 *
 * One program on sys_exit (tp_btf, or raw_tp where tp_btf does not load), filtered by
 * syscall number. On x86_64 the saved pt_regs still hold the six arguments at exit (the
 * return value goes to ax only), and the user buffers are still there, so one hook sees
 * arguments, result and the bytes moved; no per-thread enter map is needed. close(2) is
 * seen at exit too: the fd is gone from the table but (tgid, fd) still names our entry.
 *
 * A connection is an entry in sd_conns keyed by (tgid, fd), made at connect (client),
 * accept (server) or the first read/write on a socket we had not seen (role inferred
 * from the first message). The protocol is inferred from the first chunks of data
 * (HTTP/1, PostgreSQL, MySQL, Redis, DNS on TCP; DNS on UDP) as Pixie's protocol_inference.h
 * does; only chunks of protocols switched on in sd_protos are copied into the ring, the
 * rest are counted. Every data record carries its byte position in its direction so the
 * reader can tell what was lost.
 *
 * One object with two entry points on sys_exit, tp_btf and raw_tp; the loader loads one.
 *
 * TLS: uprobes on OpenSSL's SSL_read/SSL_write/SSL_read_ex/SSL_write_ex (same object, same
 * maps, attached per libssl file by src/andon/events/tls.py). The entry probe stashes the
 * call's buffer per thread in sd_tls; the read/write syscall OpenSSL makes on the socket
 * during the call runs on the same thread, so sys_exit finds the stash, notes the fd in it,
 * marks the connection ssl and drops the ciphertext (counted). The return probe copies the
 * plaintext (length: the return value, or what the _ex calls store through their size_t pointer) into a
 * data record of that connection flagged SD_F_ENCRYPTED. A call with no nested syscall
 * (a read served from OpenSSL's buffer) uses the fd last seen under the same SSL *
 * (sd_sslfd). Protocol inference runs on the plaintext.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "../abi/sockdata.h"
#include "../include/fdsock.h"

char LICENSE[] SEC("license") = "GPL";

const volatile struct andon_sd_config sd_cfg = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22); /* resized by the loader */
} sd_ring SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SD_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} sd_stats SEC(".maps");

/* protocol -> whose data is wanted: a bit per connection role, 1 << SD_ROLE_* (0: the
 * protocol is off); the loader fills it, and may change it live */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SD_PROTO_MAX);
	__type(key, __u32);
	__type(value, __u32);
} sd_protos SEC(".maps");

/* with sd_cfg.pid_filter: the only tgids traced (filled by the loader, changed live) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} sd_pids SEC(".maps");

/* the next conn_id */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sd_ids SEC(".maps");

struct sdc_key {
	__u32 tgid;
	__s32 fd;
};

struct sdc_conn {
	__u64 conn_id;
	__u64 sk;     /* the struct sock the fd named when we made the entry */
	__u64 file;   /* the struct file the fd named when last checked: while the fd still names
		       * it, it is the same socket, and the file's inode and socket need not be read */
	__u64 sent;
	__u64 recv;
	__u8 role;
	__u8 protocol;
	__u8 tries;   /* chunks inference has looked at (of plaintext, once ssl) */
	__u8 l4;
	__u8 ssl;     /* the socket carries TLS: its bytes are never copied */
	__u8 _pad[3];
	__u64 tls_sent; /* plaintext bytes written through the TLS library */
	__u64 tls_recv;
	__u64 tls_ssl;  /* the SSL * whose calls last came here: its sd_sslfd binding ends with us */
	/* While inferring: the last small chunks of one direction that no protocol matched
	 * (a 4-byte MySQL header read before its payload, dnsmasq's 2-byte DNS length), held
	 * so the next chunk is also tried with them in front, and sent ahead of it when
	 * that recognises a protocol. */
	__u64 pend_pos; /* their pos */
	__u16 pend_nr;  /* the syscall (or TLS call) of the first of them */
	__u8 pend_len;  /* bytes held, <= SD_PEND_MAX; 0: none */
	__u8 pend_dir;
	__u8 pend_enc;  /* plaintext of TLS calls */
	__u8 _pad2[3];
	__u8 pend[16];
};

#define SD_PEND_MAX 16 /* bytes of small leading chunks held per connection while inferring */
#define SD_JOIN_AT (2 * SD_COPY_MAX) /* where in sdc_scratch.buf the held bytes and the next chunk's head are joined */
#define SD_JOIN_HEAD 48 /* bytes of the next chunk put behind them: enough for every check in sd__infer */

/* LRU: an entry whose close we never see (the process exited, dup2 over it) is
 * eventually evicted instead of filling the table */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sdc_key);
	__type(value, struct sdc_conn);
} sd_conns SEC(".maps");

/* Processes that have had an entry in sd_conns, with the highest fd of one. An exec or a
 * close_range(2) closes fds without a close(2) we see; only in these processes, and only
 * up to that fd, do they look for entries to end. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u32);
} sd_tgids SEC(".maps");

/* A data record is built here, then copied into the ring at its exact size. buf is
 * three copy bounds long so that a masked offset (< SD_COPY_MAX) plus a masked length
 * (< 2 * SD_COPY_MAX) is provably inside it. */
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wgnu-variable-sized-type-not-at-end"
struct sdc_scratch {
	struct andon_sd_data d; /* d.data[] is buf */
	__u8 buf[3 * SD_COPY_MAX];
};
#pragma clang diagnostic pop

/* One per CPU, indexed by CPU number: a per-CPU array value is limited to 32 KiB
 * (PCPU_MIN_UNIT_SIZE) and this one is larger. The loader sets max_entries to the
 * number of possible CPUs; a program runs with migration disabled, so its CPU's entry
 * is its own until it returns. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct sdc_scratch);
} sd_scratch SEC(".maps");

/* A TLS library call in progress on a thread (key: pid_tgid), from entry to return. */
struct sdt_call {
	__u64 ssl;  /* the SSL * */
	__u64 buf;  /* the caller's plaintext buffer */
	__u64 outp; /* size_t * of the _ex calls (bytes done), 0 for SSL_read/SSL_write */
	__s32 fd;   /* socket of a nested read/write seen during the call, -1 until then */
	__u16 fn;   /* SD_TLS_* */
	__u16 _pad;
};

/* LRU: a thread that dies inside a call leaves its entry; it ages out */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct sdt_call);
} sd_tls SEC(".maps");

/* The file operations of every socket (net/socket.c socket_file_ops), learned from the
 * first file whose inode says it is a socket: from then on one read of a file's f_op tells
 * a socket from anything else. 0 until learned. */
__u64 sd_sock_fops = 0;

/* TLS library calls in progress (entered, not yet returned) over all threads. While it is
 * 0 no syscall can be inside one, and sd__on_data skips the sd_tls lookup. It is never
 * below the number of calls in sd_tls: an entry the LRU evicts is not subtracted. */
__u64 sd_tls_live = 0;

struct sdt_ssl_key {
	__u32 tgid;
	__u32 _pad;
	__u64 ssl;
};

/* (tgid, SSL *) -> the fd its calls were last seen using */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sdt_ssl_key);
	__type(value, __s32);
} sd_sslfd SEC(".maps");

/* pid_tgid -> the socket this thread last read TLS records from outside any library call.
 * An SSL over a memory BIO (Python's asyncio, and so aiohttp, uvicorn, asyncpg) never
 * touches its socket inside SSL_read: the event loop reads the ciphertext with recv(2),
 * hands it to the SSL's BIO, then calls SSL_read on the same thread. So the socket that
 * thread read last outside a call is the one the next handshake step (or read call of an
 * SSL * not bound yet) with no socket of its own works on: that call takes (and removes)
 * the entry and binds its SSL * to the fd in sd_sslfd. A handshake's last step follows
 * its own socket's read, so a new SSL ends bound right even where malloc reused an old
 * one's address. Writes never take it (a write is not caused by a read on its socket);
 * they use the binding. LRU: a thread that exits leaves its entry. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __s32);
} sd_tls_rd SEC(".maps");

/* pid_tgid -> the SSL * of an SSL_do_handshake in progress. Its own map, not sd_tls: a
 * handshake carries no plaintext, so its socket calls are not claimed as a call's, and a
 * handshake step inside another call (none in OpenSSL 1.1/3, but a build could) does not
 * replace that call's entry. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u64);
} sd_tls_hs SEC(".maps");

/* the uprobe programs' own scratch, as sd_scratch (sized by the loader): a return probe
 * preempted by a syscall exit on the same CPU does not share a buffer with it */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct sdc_scratch);
} sd_tscratch SEC(".maps");

/* Wire structs written only through casts get no BTF of their own; anchor them so the
 * ABI test can read their layout from the object. libbpf ignores the section. */
struct andon_sd_open __sd_btf_open SEC(".andon.btf") __attribute__((used));
struct andon_sd_close __sd_btf_close SEC(".andon.btf") __attribute__((used));
struct andon_sd_config __sd_btf_config SEC(".andon.btf") __attribute__((used));
struct andon_sd_lib __sd_btf_lib SEC(".andon.btf") __attribute__((used));

#define BOUND(x, mask) ({ __u64 __v = (x); asm volatile("%[v] &= %[m]" : [v] "+r"(__v) : [m] "i"(mask)); __v; })

/* x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl) */
#define NR_READ 0
#define NR_WRITE 1
#define NR_CLOSE 3
#define NR_READV 19
#define NR_WRITEV 20
#define NR_CONNECT 42
#define NR_ACCEPT 43
#define NR_SENDTO 44
#define NR_RECVFROM 45
#define NR_SENDMSG 46
#define NR_RECVMSG 47
#define NR_ACCEPT4 288
#define NR_RECVMMSG 299
#define NR_SENDMMSG 307
#define NR_PREADV2 327
#define NR_PWRITEV2 328
#define NR_EXECVE 59
#define NR_EXECVEAT 322
#define NR_CLOSE_RANGE 436
#define NR_MMAP 9
#define NR_SENDFILE 40
#define NR_SPLICE 275
#define PROT_EXEC 0x4
#define CLOSE_RANGE_CLOEXEC (1U << 2)

#define TS_COMPAT 0x0002
#define EINPROGRESS 115
#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define SD_IOV_MAX 1024 /* iovecs walked per call (UIO_MAXIOV: the kernel takes no more) */
#define SD_MMSG_MAX 8 /* messages of one sendmmsg/recvmmsg delivered; the rest are counted */

/* struct mmsghdr (include/linux/socket.h), not in every kernel's BTF */
struct sd_mmsghdr {
	struct user_msghdr msg_hdr;
	unsigned int msg_len;
};

static __always_inline void sd__count(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&sd_stats, &idx);
	if (v)
		*v += n;
}

/* The sock of a socket we trace, with its family and protocol; NULL for anything but TCP/UDP
 * over IPv4/IPv6 and unix stream sockets (netlink, raw, unix datagrams, ... are not traced).
 * A unix stream socket is a byte stream as TCP is: its l4 here is IPPROTO_TCP, which is what
 * the connection's entry needs (held chunks, no datagram peers); its open record says 0. */
static __always_inline struct sock *sd__inet_sock(struct socket *so, __u16 *family, __u8 *l4)
{
	struct sock *sk = BPF_CORE_READ(so, sk);
	if (!sk)
		return NULL;
	*family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (*family == AF_UNIX) {
		if (BPF_CORE_READ(sk, sk_type) != SOCK_STREAM || !sd_cfg.unix_sockets)
			return NULL;
		*l4 = IPPROTO_TCP;
		return sk;
	}
	if (*family != AF_INET && *family != AF_INET6)
		return NULL;
	*l4 = BPF_CORE_READ(sk, sk_protocol);
	if (*l4 != IPPROTO_TCP && *l4 != IPPROTO_UDP)
		return NULL;
	return sk;
}

/* The wake-up flag for a record of len bytes about to go into the ring: with a wakeup_shift,
 * the reader sleeps on a timer and is woken early only when the backlog crosses a multiple
 * of 1 << wakeup_shift bytes. Under a steady trickle the kernel's adaptive wake-up costs an
 * irq_work (a self-IPI: a VM exit in a guest) and a context switch for nearly every read;
 * a crossing missed in a race between CPUs is caught at the next multiple or by the timer. */
static __always_inline __u64 sd__wake(__u64 len)
{
	__u32 shift = sd_cfg.wakeup_shift & 63;
	if (!shift)
		return 0;
	__u64 before = bpf_ringbuf_query(&sd_ring, BPF_RB_AVAIL_DATA);
	return (before >> shift) != ((before + len + 8) >> shift) ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

static __always_inline void sd__hdr(struct andon_sd_hdr *h, __u16 type, __u64 pid_tgid, long fd, __u8 role,
				    __u8 protocol, __u64 conn_id)
{
	h->type = type;
	h->role = role;
	h->protocol = protocol;
	h->pid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
	h->fd = fd;
	h->ts = bpf_ktime_get_boot_ns();
	h->conn_id = conn_id;
}

/* The header of a record of connection c. */
static __always_inline void sd__header(struct andon_sd_hdr *h, __u16 type, __u64 pid_tgid, long fd, struct sdc_conn *c)
{
	sd__hdr(h, type, pid_tgid, fd, c->role, c->protocol, c->conn_id);
}

/* A data record of connection c: its header and fields; its datagram peer (rport, rfamily,
 * raddr) and data[] are the caller's. */
static __always_inline void sd__data_rec(struct andon_sd_data *d, struct sdc_conn *c, __u64 pid_tgid, long fd,
					 __u64 pos, __u32 size, __u32 copied, __u16 nr, __u8 dir, __u8 flags)
{
	sd__header(&d->h, SD_REC_DATA, pid_tgid, fd, c);
	d->pos = pos;
	d->size = size;
	d->copied = copied;
	d->nr = nr;
	d->direction = dir;
	d->flags = flags;
}

/* A data record with no datagram peer: its address fields zero. */
static __always_inline void sd__no_peer(struct andon_sd_data *d)
{
	d->rport = 0;
	d->rfamily = 0;
	__builtin_memset(d->raddr, 0, sizeof(d->raddr));
}

static __always_inline void sd__emit_close(struct sdc_conn *c, __u64 pid_tgid, long fd, __u32 reason)
{
	if (c->tls_ssl) {
		/* the connection's SSL * is bound to this fd no more: freed and its address
		 * reused by malloc, a new SSL would find this binding and send its calls here */
		struct sdt_ssl_key k = {.tgid = pid_tgid >> 32, .ssl = c->tls_ssl};
		__s32 *bound = bpf_map_lookup_elem(&sd_sslfd, &k);
		if (bound && *bound == fd)
			bpf_map_delete_elem(&sd_sslfd, &k);
	}
	struct andon_sd_close *r = bpf_ringbuf_reserve(&sd_ring, sizeof(*r), 0);
	if (!r) {
		sd__count(SD_STAT_DROPS, 1);
		return;
	}
	if (c->pend_len) /* held while inferring, never recognised */
		sd__count(SD_STAT_SKIPPED_BYTES, c->pend_len);
	sd__header(&r->h, SD_REC_CLOSE, pid_tgid, fd, c);
	r->bytes_sent = c->sent;
	r->bytes_recv = c->recv;
	r->reason = reason;
	r->_pad = 0;
	bpf_ringbuf_submit(r, sd__wake(sizeof(*r)));
	sd__count(SD_STAT_EVENTS, 1);
}

/* A unix stream socket's server address into its open record: the address it is bound to
 * (an accepted socket shares its listener's), else its peer's (a client is not bound); none
 * for an unnamed pair. Global, as sd__copy: verified once, on its own. */
__noinline int sd__unix_path(struct andon_sd_open *r, __u64 skp)
{
	struct sock *sk = (struct sock *)skp;
	if (!r || !sk)
		return 0;
	struct unix_address *ua = BPF_CORE_READ((struct unix_sock *)sk, addr);
	if (!ua) {
		struct sock *peer = BPF_CORE_READ((struct unix_sock *)sk, peer);
		if (peer)
			ua = BPF_CORE_READ((struct unix_sock *)peer, addr);
	}
	if (!ua)
		return 0;
	int len = BPF_CORE_READ(ua, len) - (int)sizeof(__u16); /* sockaddr_un: sun_family, then sun_path */
	if (len <= 0 || len > SD_UNIX_PATH_MAX)
		return 0;
	if (bpf_probe_read_kernel(r->path, len, &ua->name[0].sun_path))
		return 0;
	r->path_len = len;
	return len;
}

/* Make the entry for (tgid, fd), which names socket sk, and send its open record. */
static __always_inline struct sdc_conn *sd__conn_new(struct sdc_key *key, struct file *f, struct sock *sk,
						   __u16 family, __u8 l4, __u8 role, __u32 origin, __u64 pid_tgid)
{
	__u32 zero = 0;
	__u64 *next = bpf_map_lookup_elem(&sd_ids, &zero);
	if (!next)
		return NULL;
	struct sdc_conn c = {
		.conn_id = __sync_fetch_and_add(next, 1) + 1,
		.sk = (__u64)sk,
		.file = (__u64)f,
		.role = role,
		.l4 = l4,
	};
	if (bpf_map_update_elem(&sd_conns, key, &c, BPF_ANY)) {
		sd__count(SD_STAT_CONN_FULL, 1);
		return NULL;
	}
	struct sdc_conn *cp = bpf_map_lookup_elem(&sd_conns, key);
	if (!cp)
		return NULL;
	__u32 *top = bpf_map_lookup_elem(&sd_tgids, &key->tgid);
	if (!top) {
		__u32 fd = key->fd;
		bpf_map_update_elem(&sd_tgids, &key->tgid, &fd, BPF_ANY);
	} else if ((__u32)key->fd > *top) {
		*top = key->fd;
	}

	struct andon_sd_open *r = bpf_ringbuf_reserve(&sd_ring, sizeof(*r), 0);
	if (!r) {
		sd__count(SD_STAT_DROPS, 1);
		return cp;
	}
	sd__header(&r->h, SD_REC_OPEN, pid_tgid, key->fd, cp);
	r->family = family;
	r->l4 = family == AF_UNIX ? 0 : l4;
	r->origin = origin;
	__builtin_memset(r->laddr, 0, sizeof(r->laddr));
	__builtin_memset(r->raddr, 0, sizeof(r->raddr));
	r->path_len = 0;
	__builtin_memset(r->path, 0, sizeof(r->path)); /* not whatever the ring held there before */
	r->sock_id = (__u64)sk;
	r->peer_id = 0;
	if (family == AF_UNIX) {
		r->lport = 0;
		r->rport = 0;
		r->peer_id = (__u64)BPF_CORE_READ((struct unix_sock *)sk, peer);
		sd__unix_path(r, (__u64)sk);
	} else {
		/* the socket's own addresses: right inside any network namespace */
		r->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
		r->rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
		if (family == AF_INET) {
			bpf_probe_read_kernel(r->laddr, 4, &sk->__sk_common.skc_rcv_saddr);
			bpf_probe_read_kernel(r->raddr, 4, &sk->__sk_common.skc_daddr);
		} else {
			bpf_probe_read_kernel(r->laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
			bpf_probe_read_kernel(r->raddr, 16, &sk->__sk_common.skc_v6_daddr);
		}
	}
	r->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	/* the process's name (its group leader's), and the thread's: dig's are dig and isc-net-0000 */
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	BPF_CORE_READ_STR_INTO(&r->comm, task, group_leader, comm);
	bpf_get_current_comm(r->tcomm, sizeof(r->tcomm));
	bpf_ringbuf_submit(r, sd__wake(sizeof(*r)));
	sd__count(SD_STAT_EVENTS, 1);
	return cp;
}

/* f is a socket's file (its inode said so): its f_op is every socket's */
static __always_inline void sd__learn_fops(struct file *f)
{
	sd_sock_fops = (__u64)BPF_CORE_READ(f, f_op);
}

/* connect/accept: a new connection on fd whatever was there before. */
static __always_inline void sd__on_conn(long fd, __u8 role, __u32 origin, __u64 pid_tgid, const int btf)
{
	struct file *f = btf ? andon_fd_file_btf(fd) : andon_fd_file(fd);
	struct socket *so = andon_file_socket(f);
	__u16 family = 0;
	__u8 l4 = 0;
	if (!so)
		return;
	if (!sd_sock_fops)
		sd__learn_fops(f);
	struct sock *sk = sd__inet_sock(so, &family, &l4);
	if (!sk)
		return;
	struct sdc_key key = {.tgid = pid_tgid >> 32, .fd = fd};
	struct sdc_conn *old = bpf_map_lookup_elem(&sd_conns, &key);
	if (old)
		sd__emit_close(old, pid_tgid, fd, SD_CLOSE_REUSED);
	sd__conn_new(&key, f, sk, family, l4, role, origin, pid_tgid);
}

/* The connection of entry key ends: its close record, and the entry goes. */
static __always_inline void sd__end(struct sdc_key *key, struct sdc_conn *c, __u64 pid_tgid, __u32 reason)
{
	sd__emit_close(c, pid_tgid, key->fd, reason);
	bpf_map_delete_elem(&sd_conns, key);
}

static __always_inline void sd__on_close(long fd, __u64 pid_tgid)
{
	struct sdc_key key = {.tgid = pid_tgid >> 32, .fd = fd};
	struct sdc_conn *c = bpf_map_lookup_elem(&sd_conns, &key);
	if (c)
		sd__end(&key, c, pid_tgid, SD_CLOSE_SYSCALL);
}

/* fds closed with no close(2): by close_range(2) (fds first..last), by an exec (every
 * close-on-exec fd), or by the process's exit (every fd). The fast path compares the file
 * an fd names with the one it named last time; an fd closed unseen whose number and freed
 * struct file both came back to a new socket would pass for the old connection. So these
 * end the entries now: each fd of the range up to the process's highest with an entry is
 * looked up (a lookup that misses, ~40 ns, per fd). */
#define SD_SWEEP_MAX (1 << 20)

struct sd_sweep {
	__u64 pid_tgid;
	__u32 first;
	__u32 reason; /* SD_CLOSE_SYSCALL (close_range), SD_CLOSE_EXEC or SD_CLOSE_EXIT */
};

static long sd__sweep_one(__u32 i, struct sd_sweep *w)
{
	struct sdc_key key = {.tgid = w->pid_tgid >> 32, .fd = w->first + i};
	struct sdc_conn *c = bpf_map_lookup_elem(&sd_conns, &key);
	if (!c)
		return 0;
	/* after the exec, before its new image ran: an fd that still names the file is open */
	if (w->reason == SD_CLOSE_EXEC && (__u64)andon_fd_file(key.fd) == c->file)
		return 0;
	sd__end(&key, c, w->pid_tgid, w->reason);
	return 0;
}

static __always_inline void sd__on_unseen_closes(__u64 pid_tgid, __u32 first, __u32 last, __u32 reason)
{
	__u32 tgid = pid_tgid >> 32;
	__u32 *top = bpf_map_lookup_elem(&sd_tgids, &tgid);
	if (!top)
		return; /* no entries here: nothing to look through */
	if (last > *top)
		last = *top;
	if (first > last)
		return;
	__u32 n = last - first + 1;
	struct sd_sweep w = {.pid_tgid = pid_tgid, .first = first, .reason = reason};
	bpf_loop(n < SD_SWEEP_MAX ? n : SD_SWEEP_MAX, sd__sweep_one, &w, 0);
}

/* ---- copying the bytes -------------------------------------------------------------- */

/* the syscall's arguments, as the global functions below take them */
struct sdc_args {
	__u64 a[6];
};

#define SD_IOV_BATCH 4 /* iovecs read from user memory at a time */

/* An iovec array's walk, as a bpf_loop callback's context. */
struct sd_iov_walk {
	struct sdc_scratch *s;
	const struct iovec *iov;
	__u64 cnt;
	__u32 want;
	__u32 off;
	struct iovec v[SD_IOV_BATCH]; /* iov[i - i % SD_IOV_BATCH ...], read at i % SD_IOV_BATCH == 0 */
};

/* One iovec of the walk into s->buf; returns 1 to stop. A callback, so the verifier checks
 * it once however many iovecs there are: gRPC's C core writes a header block as one iovec a
 * string, 25 for a small call, up to 260 a call. The array is read SD_IOV_BATCH iovecs at a
 * time: one helper call where there were four. */
static long sd__iov_step(__u32 i, struct sd_iov_walk *w)
{
	struct sdc_scratch *s = w->s;
	__u32 off = w->off, want = w->want;
	if (!s || i >= w->cnt || off >= want)
		return 1;
	__u32 k = i % SD_IOV_BATCH;
	if (k == 0) {
		__u64 n = w->cnt - i;
		if (n > SD_IOV_BATCH)
			n = SD_IOV_BATCH;
		if (bpf_probe_read_user(w->v, n * sizeof(struct iovec), &w->iov[i]))
			return 1;
	}
	struct iovec v = w->v[k & (SD_IOV_BATCH - 1)];
	__u64 l = v.iov_len;
	if (l > want - off)
		l = want - off;
	if (l && bpf_probe_read_user(&s->buf[BOUND(off, SD_COPY_MAX - 1)], BOUND(l, 2 * SD_COPY_MAX - 1), v.iov_base)) {
		sd__count(SD_STAT_READ_ERRORS, 1);
		return 1;
	}
	w->off = off + l;
	return 0;
}

/* Copy up to want bytes spread over an iovec array in user memory into s->buf. */
static __always_inline __u32 sd__copy_iov(struct sdc_scratch *s, const struct iovec *iov, __u64 cnt, __u32 want)
{
	struct sd_iov_walk w = { .s = s, .iov = iov, .cnt = cnt, .want = want };
	bpf_loop(cnt < SD_IOV_MAX ? cnt : SD_IOV_MAX, sd__iov_step, &w, 0);
	return w.off;
}

/* A sockaddr from user memory into the data record's peer fields (UDP datagrams). */
static __always_inline void sd__peer(struct andon_sd_data *d, const void *uaddr, __u32 len)
{
	if (!uaddr || len < 8)
		return;
	struct sockaddr_in6 sa = {};
	bpf_probe_read_user(&sa, len < sizeof(sa) ? 8 : sizeof(sa), uaddr);
	if (sa.sin6_family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)&sa;
		d->rfamily = AF_INET;
		d->rport = bpf_ntohs(in->sin_port);
		__builtin_memcpy(d->raddr, &in->sin_addr, 4);
		d->flags |= SD_F_ADDR;
	} else if (sa.sin6_family == AF_INET6 && len >= sizeof(sa)) {
		d->rfamily = AF_INET6;
		d->rport = bpf_ntohs(sa.sin6_port);
		__builtin_memcpy(d->raddr, &sa.sin6_addr, 16);
		d->flags |= SD_F_ADDR;
	}
}

/* ---- protocol inference (the first chunks of a connection) -------------------------- */

#define B(i) ((__u32)b[i])

static __always_inline int sd__is_http(const __u8 *b, __u32 n, int *req)
{
	if (n < 8)
		return 0;
	if (b[0] == 'H' && b[1] == 'T' && b[2] == 'T' && b[3] == 'P' && b[4] == '/' && b[5] == '1' && b[6] == '.') {
		*req = 0;
		return 1;
	}
	*req = 1;
	if (b[0] == 'G' && b[1] == 'E' && b[2] == 'T' && b[3] == ' ')
		return 1;
	if (b[0] == 'P' && b[1] == 'U' && b[2] == 'T' && b[3] == ' ')
		return 1;
	if (b[0] == 'P' && b[1] == 'O' && b[2] == 'S' && b[3] == 'T' && b[4] == ' ')
		return 1;
	if (b[0] == 'H' && b[1] == 'E' && b[2] == 'A' && b[3] == 'D' && b[4] == ' ')
		return 1;
	if (b[0] == 'P' && b[1] == 'A' && b[2] == 'T' && b[3] == 'C' && b[4] == 'H' && b[5] == ' ')
		return 1;
	if (b[0] == 'D' && b[1] == 'E' && b[2] == 'L' && b[3] == 'E' && b[4] == 'T' && b[5] == 'E' && b[6] == ' ')
		return 1;
	if (b[0] == 'O' && b[1] == 'P' && b[2] == 'T' && b[3] == 'I' && b[4] == 'O' && b[5] == 'N' && b[6] == 'S' &&
	    b[7] == ' ')
		return 1;
	return 0;
}

/* HTTP/2 (RFC 9113 3.4): the client's connection preface, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
 * first on the connection (in the clear with prior knowledge, or in TLS after ALPN "h2"):
 * its first 16 bytes. A connection seen only from its middle has no preface, and its
 * header compression state could not be followed anyway. */
static __always_inline int sd__is_http2(const __u8 *b, __u32 n, int *req)
{
	if (n < 16)
		return 0;
	*req = 1;
	return b[0] == 'P' && b[1] == 'R' && b[2] == 'I' && b[3] == ' ' && b[4] == '*' && b[5] == ' ' && b[6] == 'H' &&
	       b[7] == 'T' && b[8] == 'T' && b[9] == 'P' && b[10] == '/' && b[11] == '2' && b[12] == '.' && b[13] == '0' &&
	       b[14] == '\r' && b[15] == '\n';
}

/* HTTP/2 from a connection's middle (it began before the sensor looked, so no preface):
 * frame headers that RFC 9113 allows (up to 8 frames, none longer than 256 KiB), one of
 * them HEADERS, tiling the chunk exactly; or, for a chunk cut by the copy bound (n < size),
 * tiling what was copied, the last frame (or the next frame's header) going on past the
 * copy. A request unless that block starts with :status (HPACK's static entries 8-14
 * indexed, or a literal named by entry 8). b is s->buf, n <= SD_COPY_MAX. */
static __always_inline int sd__is_http2_frames(const __u8 *b, __u32 n, __u32 size, int *req)
{
	if (n > size || n < 9 || n > SD_COPY_MAX)
		return 0;
	int cut = n < size;
	__u32 o = 0;
	int headers = 0, status = 0;
	for (int k = 0; k < 8 && o < n; k++) {
		if (o + 9 > n) {
			if (!cut)
				return 0;
			break; /* the next frame's header is past the copy: not seen */
		}
		__u32 i = BOUND(o, SD_COPY_MAX - 1);
		__u32 len = B(i) << 16 | B(i + 1) << 8 | B(i + 2);
		__u8 t = b[i + 3], f = b[i + 4];
		__u32 sid = (B(i + 5) & 0x7f) << 24 | B(i + 6) << 16 | B(i + 7) << 8 | B(i + 8);
		if ((b[i + 5] & 0x80) || len > (1 << 18))
			return 0;
		switch (t) {
		case 0: /* DATA */
			if (!sid || (f & ~0x09))
				return 0;
			break;
		case 1: /* HEADERS */
			if (!(sid & 1) || (f & ~0x2d))
				return 0;
			if (!headers) {
				__u32 p = i + 9 + ((f & 0x08) ? 1 : 0) + ((f & 0x20) ? 5 : 0);
				if (p < n) {
					__u8 c = b[BOUND(p, 2 * SD_COPY_MAX - 1)];
					status = (c >= 0x88 && c <= 0x8e) || c == 0x48 || c == 0x08 || c == 0x18;
				}
			}
			headers = 1;
			break;
		case 3: /* RST_STREAM */
		case 8: /* WINDOW_UPDATE */
			if (len != 4 || f)
				return 0;
			break;
		case 4: /* SETTINGS */
			if (sid || len % 6 || (f & ~1) || (f && len))
				return 0;
			break;
		case 6: /* PING */
			if (sid || len != 8 || (f & ~1))
				return 0;
			break;
		default:
			return 0;
		}
		o += 9 + len;
	}
	if (!headers || (cut ? o < n && o + 9 <= n : o != n))
		return 0; /* no block; or frames left unchecked (8 seen), or not tiling exactly */
	*req = !status;
	return 1;
}

/* PostgreSQL (protocol 3.0, "Message Formats"): the startup message and SSLRequest are
 * int32 length + int32 code; then typed messages: a byte tag + int32 length that
 * counts itself but not the tag. */
static __always_inline int sd__is_pgsql(const __u8 *b, __u32 n, __u32 size, int *req)
{
	if (n < 8)
		return 0;
	__u32 len0 = B(0) << 24 | B(1) << 16 | B(2) << 8 | B(3);
	__u32 code = B(4) << 24 | B(5) << 16 | B(6) << 8 | B(7);
	*req = 1;
	/* SSLRequest / GSSENCRequest: exactly 8 bytes */
	if (len0 == 8 && size == 8 && (code == 80877103 || code == 80877104))
		return 1;
	/* StartupMessage: version 3.0, length = the whole message */
	if (code == 0x00030000 && len0 == size && len0 < 10000)
		return 1;
	__u32 len1 = B(1) << 24 | B(2) << 16 | B(3) << 8 | B(4);
	/* a simple query ('Q') or a Parse ('P') that is the whole chunk */
	if ((b[0] == 'Q' || b[0] == 'P') && len1 >= 5 && len1 + 1 <= size && len1 < (1 << 24))
		return len1 + 1 == size || b[0] == 'P';
	/* the server's first answer: AuthenticationRequest ('R', ok/md5/sasl codes) */
	if (b[0] == 'R' && len1 >= 8 && len1 < 4096 && B(5) == 0 && B(6) == 0 && B(7) == 0 && B(8) <= 12) {
		*req = 0;
		return 1;
	}
	return 0;
}

/* MySQL packets: 3-byte little-endian payload length, sequence id, payload. A command
 * is sequence 0 with a command byte; the server's greeting is sequence 0 with
 * protocol version 10. */
static __always_inline int sd__is_mysql(const __u8 *b, __u32 n, __u32 size, int *req)
{
	if (n < 5)
		return 0;
	__u32 len = B(0) | B(1) << 8 | B(2) << 16;
	if (b[3] != 0 || len + 4 != size)
		return 0;
	__u8 cmd = b[4];
	if (cmd == 0x0a && len > 40) {
		*req = 0; /* Handshake v10 */
		return 1;
	}
	*req = 1;
	/* COM_QUIT, INIT_DB, QUERY, PING, STMT_PREPARE/EXECUTE/CLOSE/RESET */
	if (cmd == 0x01 || cmd == 0x0e)
		return len == 1;
	return cmd == 0x02 || cmd == 0x03 || cmd == 0x16 || cmd == 0x17 || cmd == 0x19 || cmd == 0x1a;
}

/* Redis RESP: a request is an array of bulk strings ("*<n>\r\n$"); the first replies
 * start with + - : $ and end with CRLF. */
static __always_inline int sd__is_redis(const __u8 *b, __u32 n, __u32 size, int *req)
{
	if (n < 4)
		return 0;
	if (b[0] == '*' && b[1] >= '1' && b[1] <= '9') {
		int i = 2;
		if (b[2] >= '0' && b[2] <= '9')
			i = 3;
		if (n < 8)
			return 0;
		*req = 1;
		return b[i & 7] == '\r' && b[(i + 1) & 7] == '\n' && b[(i + 2) & 7] == '$';
	}
	if (b[0] == '+' || b[0] == '-' || b[0] == ':' || b[0] == '$') {
		/* a whole short reply: its CRLF is the last two bytes copied */
		if (n != size || n > 512)
			return 0;
		*req = 0;
		return b[(n - 2) & (SD_COPY_MAX - 1)] == '\r' && b[(n - 1) & (SD_COPY_MAX - 1)] == '\n';
	}
	return 0;
}

/* DNS (RFC 1035 4.1.1) on UDP: a 12-byte header whose counts are sane. */
static __always_inline int sd__is_dns(const __u8 *b, __u32 n, __u32 size, int *req)
{
	if (n < 12 || size > 4096)
		return 0;
	__u32 flags = B(2) << 8 | B(3);
	__u32 qd = B(4) << 8 | B(5), an = B(6) << 8 | B(7), ns = B(8) << 8 | B(9), ar = B(10) << 8 | B(11);
	if (((flags >> 11) & 0xf) != 0 || (flags & 0x40)) /* standard query, Z bit zero */
		return 0;
	if (qd == 0 || qd > 10 || an > 128 || ns > 64 || ar > 64)
		return 0;
	*req = !(flags & 0x8000);
	return 1;
}

/* DNS over TCP (RFC 1035 4.2.2, RFC 7766): a 2-byte message length, then a DNS header with
 * one question. The length is at least a header and a root question, and either covers
 * the chunk exactly, ends inside it (pipelined messages), or runs past it by a sane amount
 * (a large answer read in parts). Any port. */
static __always_inline int sd__is_dns_tcp(const __u8 *b, __u32 n, __u32 size, int *req)
{
	if (n < 14)
		return 0;
	__u32 len = B(0) << 8 | B(1);
	if (len < 17 || (len + 2 > size && len > 16384))
		return 0;
	__u32 flags = B(4) << 8 | B(5);
	__u32 qd = B(6) << 8 | B(7), an = B(8) << 8 | B(9), ns = B(10) << 8 | B(11), ar = B(12) << 8 | B(13);
	if (((flags >> 11) & 0xf) != 0 || (flags & 0x40))
		return 0;
	if (qd != 1 || an > 1024 || ns > 256 || ar > 256)
		return 0;
	*req = !(flags & 0x8000);
	return 1;
}

static __always_inline __u8 sd__infer(const __u8 *b, __u32 n, __u32 size, __u8 l4, int *req)
{
	if (l4 == IPPROTO_UDP)
		return sd__is_dns(b, n, size, req) ? SD_PROTO_DNS : 0;
	if (sd__is_http(b, n, req))
		return SD_PROTO_HTTP;
	if (sd__is_http2(b, n, req))
		return SD_PROTO_HTTP2;
	if (sd__is_pgsql(b, n, size, req))
		return SD_PROTO_PGSQL;
	if (sd__is_mysql(b, n, size, req))
		return SD_PROTO_MYSQL;
	if (sd__is_redis(b, n, size, req))
		return SD_PROTO_REDIS;
	if (sd__is_dns_tcp(b, n, size, req))
		return SD_PROTO_DNS;
	return 0;
}

/* ---- a read or write ---------------------------------------------------------------- */

/*
 * Copy the chunk's bytes into s->buf (and a datagram's peer into the record); returns
 * the bytes copied. A global function: the verifier checks it once, on its own, so its
 * branches do not multiply the caller's states (the caller is big enough already).
 */
__noinline __u32 sd__copy(struct sdc_scratch *s, __u32 nr, struct sdc_args *r, __u32 want, __u32 l4)
{
	if (!s || !r)
		return 0;
	__u64 buf = r->a[1];
	__u32 got = 0;

	s->d.flags = 0;
	switch (nr) {
	case NR_READ:
	case NR_WRITE:
	case NR_SENDTO:
	case NR_RECVFROM:
		want = BOUND(want, 2 * SD_COPY_MAX - 1);
		if (bpf_probe_read_user(s->buf, want, (void *)buf)) {
			sd__count(SD_STAT_READ_ERRORS, 1);
			return 0;
		}
		got = want;
		if (l4 == IPPROTO_UDP && nr == NR_SENDTO) {
			sd__peer(&s->d, (void *)r->a[4], r->a[5]);
		} else if (l4 == IPPROTO_UDP && nr == NR_RECVFROM && r->a[4] && r->a[5]) {
			int alen = 0;
			bpf_probe_read_user(&alen, sizeof(alen), (void *)r->a[5]);
			sd__peer(&s->d, (void *)r->a[4], alen);
		}
		break;
	case NR_READV:
	case NR_WRITEV:
	case NR_PREADV2:
	case NR_PWRITEV2:
		got = sd__copy_iov(s, (const struct iovec *)buf, r->a[2], want);
		break;
	case NR_SENDMSG:
	case NR_RECVMSG:
	case NR_SENDMMSG: /* r->a[1]: this message's struct mmsghdr, whose msg_hdr comes first */
	case NR_RECVMMSG: {
		struct user_msghdr mh = {};
		if (bpf_probe_read_user(&mh, sizeof(mh), (void *)buf)) {
			sd__count(SD_STAT_READ_ERRORS, 1);
			return 0;
		}
		got = sd__copy_iov(s, mh.msg_iov, mh.msg_iovlen, want);
		if (l4 == IPPROTO_UDP)
			sd__peer(&s->d, mh.msg_name, mh.msg_namelen);
		break;
	}
	}
	return got;
}

#define SDI_REQ 0x100 /* the chunk is a request */
#define SDI_TLS 0x200 /* the chunk is a TLS record: the socket carries ciphertext */

/* Inference on the copied bytes: protocol | SDI_*. Global, as sd__copy. */
__noinline int sd__infer_chunk(struct sdc_scratch *s, __u32 joined, __u32 n, __u32 size, __u32 l4)
{
	if (!s)
		return 0;
	int req = 0;
	/* joined: the bytes at SD_JOIN_AT (held chunks + the head of this one), else the chunk */
	const __u8 *b = s->buf + BOUND(joined ? SD_JOIN_AT : 0, SD_JOIN_AT);
	__u8 p = sd__infer(b, n, size, l4, &req);
	if (!p && !joined && l4 == IPPROTO_TCP && n >= 5 && s->buf[0] >= 0x14 && s->buf[0] <= 0x17 && s->buf[1] == 3 &&
	    s->buf[2] <= 4)
		return SDI_TLS; /* a TLS record header (RFC 8446 5.1): content type 20..23, version 3.x */
	if (!p && !joined && l4 == IPPROTO_TCP && sd__is_http2_frames(s->buf, n, size, &req))
		p = SD_PROTO_HTTP2; /* last: every other protocol's own start comes first */
	return p | (req ? SDI_REQ : 0);
}

/* The connection carries TLS: from now on its socket bytes are ciphertext, and inference
 * starts afresh on the plaintext of the library calls. */
/* TLS records were read from fd outside any library call: a memory BIO's ciphertext, or
 * a handshake step's. Remembered for the thread's next read call or handshake step. */
static __always_inline void sd__tls_read_outside(long fd, __u8 dir, __u64 pid_tgid)
{
	if (dir != SD_INGRESS)
		return;
	__s32 v = fd;
	bpf_map_update_elem(&sd_tls_rd, &pid_tgid, &v, BPF_ANY);
}

/* The socket this thread read TLS records from outside a call last, taken (the note goes:
 * the call taking it is the one those records were for); -1 if none. */
static __always_inline long sd__tls_take_note(__u64 pid_tgid)
{
	__s32 *last = bpf_map_lookup_elem(&sd_tls_rd, &pid_tgid);
	if (!last)
		return -1;
	__s32 fd = *last;
	bpf_map_delete_elem(&sd_tls_rd, &pid_tgid);
	return fd;
}

/* Bind an SSL * to the socket of its thread's note (memory BIO; a handshake step). */
static __always_inline void sd__tls_bind(struct sdt_ssl_key *k, __s32 fd)
{
	bpf_map_update_elem(&sd_sslfd, k, &fd, BPF_ANY);
	sd__count(SD_STAT_TLS_BIO_BINDS, 1);
}

static __always_inline void sd__mark_ssl(struct sdc_conn *c)
{
	if (c->ssl)
		return;
	c->ssl = 1;
	c->pend_len = 0;
	if (!c->protocol)
		c->tries = 0;
}

/* An uninferred chunk (got bytes in s->buf, all of it): hold it when it is small, behind
 * held bytes it directly follows; what cannot be held is counted as skipped. */
static __always_inline void sd__hold(struct sdc_conn *c, struct sdc_scratch *s, __u32 got, __u64 size, __u64 pos,
				     __u8 dir, long nr, int encrypted)
{
	__u32 off = c->pend_len;
	if (off && (c->pend_dir != dir || c->pend_enc != encrypted || c->pend_pos + off != pos ||
		    off + size > SD_PEND_MAX)) {
		sd__count(SD_STAT_SKIPPED_BYTES, off);
		off = 0;
	}
	if (size > SD_PEND_MAX || got != size) {
		c->pend_len = 0;
		if (off)
			sd__count(SD_STAT_SKIPPED_BYTES, off);
		sd__count(SD_STAT_SKIPPED_BYTES, size);
		sd__count(SD_STAT_SKIPPED_CHUNKS, 1);
		return;
	}
	if (!off) {
		c->pend_pos = pos;
		c->pend_dir = dir;
		c->pend_nr = nr;
		c->pend_enc = encrypted;
	}
	for (int i = 0; i < SD_PEND_MAX; i++) {
		if (i >= size)
			break;
		c->pend[(off + i) & (SD_PEND_MAX - 1)] = s->buf[i];
	}
	c->pend_len = off + size;
}

/* The held bytes, as one data record ahead of the chunk whose inference they joined. */
static __always_inline void sd__emit_pend(struct sdc_conn *c, __u64 pid_tgid, long fd)
{
	struct andon_sd_data *d = bpf_ringbuf_reserve(&sd_ring, sizeof(*d) + SD_PEND_MAX, 0);
	if (!d) {
		sd__count(SD_STAT_DROPS, 1);
		sd__count(SD_STAT_DROPPED_BYTES, c->pend_len);
		return;
	}
	sd__data_rec(d, c, pid_tgid, fd, c->pend_pos, c->pend_len, c->pend_len, c->pend_nr, c->pend_dir,
		     c->pend_enc ? SD_F_ENCRYPTED : 0);
	sd__no_peer(d);
	__builtin_memcpy(d->data, c->pend, SD_PEND_MAX);
	bpf_ringbuf_submit(d, sd__wake(sizeof(*d) + SD_PEND_MAX));
	sd__count(SD_STAT_EVENTS, 1);
}

static __always_inline void sd__deliver(struct sdc_scratch *s, struct sdc_conn *c, long nr, struct sdc_args *r,
					__u64 size, __u64 pos, __u8 dir, int encrypted, long fd, __u64 pid_tgid);

/*
 * sendmmsg/recvmmsg returned ret messages: each of the first SD_MMSG_MAX becomes its own
 * data record (its length: msg_len as the kernel set it; its peer: its msg_name); the
 * messages beyond are counted as skipped chunks (their bytes are not read).
 */
static __always_inline void sd__on_mmsg(struct sdc_conn *c, long nr, struct sdc_args *r, long ret, __u8 dir, long fd,
					__u64 pid_tgid)
{
	if (c->ssl)
		return;
	__u32 cpu = bpf_get_smp_processor_id();
	struct sdc_scratch *s = bpf_map_lookup_elem(&sd_scratch, &cpu);
	if (!s)
		return;
	struct sd_mmsghdr *vec = (struct sd_mmsghdr *)r->a[1];
	struct sdc_args m = *r;
#pragma clang loop unroll(disable)
	for (int i = 0; i < SD_MMSG_MAX; i++) {
		if (i >= ret)
			break;
		__u32 len = 0;
		if (bpf_probe_read_user(&len, sizeof(len), &vec[i].msg_len)) {
			sd__count(SD_STAT_READ_ERRORS, 1);
			break;
		}
		if (!len)
			continue;
		__u64 pos = dir == SD_INGRESS ? __sync_fetch_and_add(&c->recv, len) : __sync_fetch_and_add(&c->sent, len);
		m.a[1] = (__u64)&vec[i];
		sd__deliver(s, c, nr, &m, len, pos, dir, 0, fd, pid_tgid);
	}
	if (ret > SD_MMSG_MAX)
		sd__count(SD_STAT_SKIPPED_CHUNKS, ret - SD_MMSG_MAX);
}

static __always_inline void sd__on_data(long nr, struct sdc_args *r, long ret, __u64 pid_tgid, const int btf)
{
	long fd = (int)r->a[0]; /* sendfile: out_fd */
	__u8 dir = (nr == NR_READ || nr == NR_READV || nr == NR_RECVFROM || nr == NR_RECVMSG || nr == NR_PREADV2 ||
		    nr == NR_RECVMMSG)
			   ? SD_INGRESS
			   : SD_EGRESS;
	struct file *f = btf ? andon_fd_file_btf(fd) : andon_fd_file(fd);
	if (nr == NR_SPLICE) {
		/* splice(fd_in, off_in, fd_out, ...): one end is a pipe, the socket is the other:
		 * fd_out, bytes sent; else fd_in, bytes received */
		long out = (int)r->a[2];
		struct file *fo = btf ? andon_fd_file_btf(out) : andon_fd_file(out);
		if (fo && andon_file_socket(fo)) {
			fd = out;
			f = fo;
		} else {
			dir = SD_INGRESS;
		}
	}
	if (!f)
		return;
	__u64 fops = sd_sock_fops;
	if (fops && (__u64)BPF_CORE_READ(f, f_op) != fops)
		return; /* not a socket: a file, a pipe, a tty... */
	struct sdc_key key = {.tgid = pid_tgid >> 32, .fd = fd};
	struct sdc_conn *c = bpf_map_lookup_elem(&sd_conns, &key);
	/* The fd still names the file it named last time: the same socket. Otherwise (a new
	 * fd, or one whose close we did not see) check that it is a socket, and which. */
	if (!c || c->file != (__u64)f) {
		struct socket *so = andon_file_socket(f);
		if (!so)
			return;
		if (!fops)
			sd__learn_fops(f);
		struct sock *sk = BPF_CORE_READ(so, sk);
		if (!c || c->sk != (__u64)sk) {
			__u16 family = 0;
			__u8 l4 = 0;
			if (!sd__inet_sock(so, &family, &l4))
				return;
			if (c)
				sd__emit_close(c, pid_tgid, fd, SD_CLOSE_REUSED);
			c = sd__conn_new(&key, f, sk, family, l4, SD_ROLE_UNKNOWN, SD_ORIGIN_DATA, pid_tgid);
			if (!c)
				return;
		}
		c->file = (__u64)f;
	}

	if (nr == NR_SENDMMSG || nr == NR_RECVMMSG) {
		sd__on_mmsg(c, nr, r, ret, dir, fd, pid_tgid);
		return;
	}
	__u64 size = ret;
	__u64 pos = dir == SD_INGRESS ? __sync_fetch_and_add(&c->recv, size) : __sync_fetch_and_add(&c->sent, size);

	/* inside a TLS library call on this thread: this is its ciphertext, and this fd is
	 * the call's socket */
	struct sdt_call *call = sd_tls_live ? bpf_map_lookup_elem(&sd_tls, &pid_tgid) : NULL;
	if (call) {
		/* a call whose SSL * is known to use another fd (a stale entry: a return that
		 * never came) does not claim this socket */
		struct sdt_ssl_key sk = {.tgid = pid_tgid >> 32, .ssl = call->ssl};
		__s32 *known = bpf_map_lookup_elem(&sd_sslfd, &sk);
		if (known && *known != fd)
			call = NULL;
	}
	if (call || c->ssl) {
		if (call)
			call->fd = fd;
		else
			sd__tls_read_outside(fd, dir, pid_tgid);
		sd__mark_ssl(c);
		sd__count(SD_STAT_TLS_CIPHER_BYTES, size);
		return;
	}
	__u32 cpu = bpf_get_smp_processor_id();
	struct sdc_scratch *s = bpf_map_lookup_elem(&sd_scratch, &cpu);
	if (!s)
		return;
	sd__deliver(s, c, nr, r, size, pos, dir, 0, fd, pid_tgid);
}

/* Whether a connection of this role carries wanted data of a protocol whose sd_protos entry is on. */
static __always_inline int sd__wanted(const __u32 *on, __u8 role)
{
	return on && ((*on >> (role & 7)) & 1);
}

/*
 * A chunk sendfile(2) or splice(2) moved: its bytes went from a file or pipe to the socket (or
 * from the socket to a pipe) inside the kernel, so there is nothing to copy. On a connection
 * of a wanted protocol it is a data record with copied 0 and SD_F_NOCOPY: its size keeps the
 * stream's positions whole, and a parser counts the bytes as lost where they fall (inside a
 * body of known length, as nginx's `sendfile on` sends a static file, only that body is
 * short). Before the protocol is known there are no bytes to infer from: skipped.
 */
static __always_inline void sd__deliver_nocopy(struct sdc_conn *c, long nr, __u64 size, __u64 pos, __u8 dir,
						long fd, __u64 pid_tgid)
{
	__u32 pkey = c->protocol;
	__u32 *on = bpf_map_lookup_elem(&sd_protos, &pkey);
	if (!c->protocol || !sd__wanted(on, c->role)) {
		sd__count(SD_STAT_SKIPPED_BYTES, size);
		sd__count(SD_STAT_SKIPPED_CHUNKS, 1);
		return;
	}
	struct andon_sd_data *d = bpf_ringbuf_reserve(&sd_ring, sizeof(*d), 0);
	if (!d) {
		sd__count(SD_STAT_DROPS, 1);
		sd__count(SD_STAT_DROPPED_BYTES, size);
		return;
	}
	sd__data_rec(d, c, pid_tgid, fd, pos, size, 0, nr, dir, SD_F_NOCOPY);
	sd__no_peer(d);
	bpf_ringbuf_submit(d, sd__wake(sizeof(*d)));
	sd__count(SD_STAT_EVENTS, 1);
	sd__count(SD_STAT_NOCOPY_CHUNKS, 1);
}

/*
 * Infer (while still trying), copy and send one chunk of connection c: size bytes moved,
 * pos bytes before it in its direction. For a plaintext chunk of a TLS call (encrypted)
 * the bytes are at r->a[1] and nr is the SD_TLS_* call.
 */
static __always_inline void sd__deliver(struct sdc_scratch *s, struct sdc_conn *c, long nr, struct sdc_args *r,
					__u64 size, __u64 pos, __u8 dir, int encrypted, long fd, __u64 pid_tgid)
{
	if (nr == NR_SENDFILE || nr == NR_SPLICE) {
		sd__deliver_nocopy(c, nr, size, pos, dir, fd, pid_tgid);
		return;
	}
	__u32 want = size < sd_cfg.max_copy ? size : sd_cfg.max_copy;
	if (want > SD_COPY_MAX)
		want = SD_COPY_MAX;

	int infer = !c->protocol && c->tries < sd_cfg.infer_tries;
	__u32 pkey = c->protocol;
	__u32 *on = bpf_map_lookup_elem(&sd_protos, &pkey);
	if (!infer && (!c->protocol || !sd__wanted(on, c->role))) {
		sd__count(SD_STAT_SKIPPED_BYTES, size);
		sd__count(SD_STAT_SKIPPED_CHUNKS, 1);
		return;
	}
	/* a TLS call's plaintext is one flat buffer, as read(2)'s */
	__u32 got = sd__copy(s, encrypted ? NR_READ : nr, r, want, encrypted ? IPPROTO_TCP : c->l4);
	int joined = 0;
	if (infer) {
		c->tries++;
		int found = sd__infer_chunk(s, 0, got, size, c->l4);
		if ((found & SDI_TLS) && !encrypted) {
			sd__tls_read_outside(fd, dir, pid_tgid);
			sd__mark_ssl(c);
			sd__count(SD_STAT_TLS_CIPHER_BYTES, size);
			return;
		}
		__u8 p = found & 0xff;
		__u32 held = c->pend_len;
		if (!p && held && c->l4 == IPPROTO_TCP && c->pend_dir == dir && c->pend_enc == encrypted &&
		    c->pend_pos + held == pos) {
			/* the held bytes, then the head of this chunk, inferred as one message */
			__u32 head = got < SD_JOIN_HEAD ? got : SD_JOIN_HEAD;
			__builtin_memcpy(&s->buf[SD_JOIN_AT], c->pend, SD_PEND_MAX);
			bpf_probe_read_kernel(&s->buf[SD_JOIN_AT + BOUND(held, SD_PEND_MAX - 1 + SD_PEND_MAX)],
					      BOUND(head, 2 * SD_JOIN_HEAD - 1), s->buf);
			found = sd__infer_chunk(s, 1, held + head, held + size, c->l4);
			p = found & 0xff;
			joined = !!p;
		}
		if (p) {
			int req = !!(found & SDI_REQ);
			c->protocol = p;
			/* a request written makes us the client; a request read, the server */
			if (c->role == SD_ROLE_UNKNOWN)
				c->role = (req == (dir == SD_EGRESS)) ? SD_ROLE_CLIENT : SD_ROLE_SERVER;
		}
		pkey = c->protocol;
		on = bpf_map_lookup_elem(&sd_protos, &pkey);
		if (!p) {
			if (c->l4 == IPPROTO_TCP && c->tries < sd_cfg.infer_tries) {
				sd__hold(c, s, got, size, pos, dir, nr, encrypted);
				return;
			}
			if (c->pend_len)
				sd__count(SD_STAT_SKIPPED_BYTES, c->pend_len);
			c->pend_len = 0;
		}
		if (!p || !sd__wanted(on, c->role)) {
			if (joined)
				sd__count(SD_STAT_SKIPPED_BYTES, c->pend_len);
			c->pend_len = 0;
			sd__count(SD_STAT_SKIPPED_BYTES, size);
			sd__count(SD_STAT_SKIPPED_CHUNKS, 1);
			return;
		}
		if (joined)
			sd__emit_pend(c, pid_tgid, fd);
		else if (c->pend_len)
			sd__count(SD_STAT_SKIPPED_BYTES, c->pend_len);
		c->pend_len = 0;
	}
	/* STARTTLS: PostgreSQL's SSLRequest and MySQL's SSL request packet come before the
	 * handshake, so the protocol is known when a TLS handshake record (type 22, version
	 * 3.x) arrives outside any library call: from then on the socket carries ciphertext */
	if (!encrypted && got >= 5 && (c->protocol == SD_PROTO_PGSQL || c->protocol == SD_PROTO_MYSQL) &&
	    s->buf[0] == 0x16 && s->buf[1] == 3 && s->buf[2] <= 4) {
		sd__tls_read_outside(fd, dir, pid_tgid);
		sd__mark_ssl(c);
		sd__count(SD_STAT_TLS_CIPHER_BYTES, size);
		return;
	}
	got = BOUND(got, 2 * SD_COPY_MAX - 1);
	if (got > want)
		got = want;
	struct andon_sd_data *d = &s->d;
	/* sd__copy set SD_F_ADDR and the peer for a datagram with one */
	__u8 flags = d->flags | (encrypted ? SD_F_ENCRYPTED : 0) | (got < size ? SD_F_TRUNCATED : 0);
	sd__data_rec(d, c, pid_tgid, fd, pos, size, got, nr, dir, flags);
	if (!(flags & SD_F_ADDR)) { /* raddr is read only with SD_F_ADDR: left as it is */
		d->rport = 0;
		d->rfamily = 0;
	}
	if (got < size)
		sd__count(SD_STAT_TRUNCATED, 1);
	__u64 len = sizeof(struct andon_sd_data) + BOUND(got, 2 * SD_COPY_MAX - 1);
	if (bpf_ringbuf_output(&sd_ring, d, len, sd__wake(len))) {
		sd__count(SD_STAT_DROPS, 1);
		sd__count(SD_STAT_DROPPED_BYTES, size);
		return;
	}
	sd__count(SD_STAT_EVENTS, 1);
	if (encrypted)
		sd__count(SD_STAT_TLS_CHUNKS, 1);
}

/* mmap(2) of fd with PROT_EXEC returned addr: when the file is named libssl.so.* (or
 * libssl-*, as Python wheels name the copy they bundle: libssl-6a9b88ec.so.3), tell the
 * reader, which puts the TLS uprobes on that file if it is new to it. This is how a library
 * loaded late (Python's `import ssl`), by an exec in the same pid, or from a directory of
 * its own (LD_LIBRARY_PATH, a new container image) is probed within milliseconds, not at
 * the reader's next rescan. The dynamic loader maps a library's code segment once with
 * PROT_EXEC, so this is one record per process per load. */
static __always_inline void sd__on_exec_map(long fd, __u64 addr, __u64 pid_tgid, const int btf)
{
	struct file *f = btf ? andon_fd_file_btf(fd) : andon_fd_file(fd);
	if (!f)
		return;
	const unsigned char *name = BPF_CORE_READ(f, f_path.dentry, d_name.name);
	char b[10];
	if (bpf_probe_read_kernel(b, sizeof(b), name))
		return;
	if (b[0] != 'l' || b[1] != 'i' || b[2] != 'b' || b[3] != 's' || b[4] != 's' || b[5] != 'l')
		return;
	if (b[6] != '-' && (b[6] != '.' || b[7] != 's' || b[8] != 'o' || b[9] != '.'))
		return; /* the reader checks the whole name (src/andon/events/tls.py, LIBSSL) */
	struct andon_sd_lib *r = bpf_ringbuf_reserve(&sd_ring, sizeof(*r), 0);
	if (!r) {
		sd__count(SD_STAT_DROPS, 1);
		return;
	}
	sd__hdr(&r->h, SD_REC_LIB, pid_tgid, fd, 0, 0, 0); /* of no connection */
	r->addr = addr;
	r->ino = BPF_CORE_READ(f, f_inode, i_ino);
	r->dev = BPF_CORE_READ(f, f_inode, i_sb, s_dev);
	bpf_ringbuf_submit(r, BPF_RB_FORCE_WAKEUP); /* rare, and the sooner the probes are on, the better */
	sd__count(SD_STAT_EVENTS, 1);
}

/* Executables (device, inode) an exec of a traced process was reported for: each once, so
 * the reader looks at a new executable (node, which may export a static OpenSSL) the
 * moment it first runs, not at its next rescan. LRU: a file forgotten is reported again. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u8);
} sd_exes SEC(".maps");

/* execve(2) returned 0: an SD_REC_LIB record (addr 0, the executable's inode) the first time
 * this executable runs, for the reader to look at it (src/andon/events/tls.py, _exe_of). */
static __always_inline void sd__on_exec(__u64 pid_tgid, const int btf)
{
	struct task_struct *t = btf ? bpf_get_current_task_btf() : (struct task_struct *)bpf_get_current_task();
	struct file *exe = BPF_CORE_READ(t, mm, exe_file);
	if (!exe)
		return;
	__u64 ino = BPF_CORE_READ(exe, f_inode, i_ino);
	__u64 dev = BPF_CORE_READ(exe, f_inode, i_sb, s_dev);
	__u64 key = (dev << 40) ^ ino; /* the reader deletes it (the same key) when it could not look */
	__u8 one = 1;
	if (bpf_map_update_elem(&sd_exes, &key, &one, BPF_NOEXIST))
		return; /* reported before */
	struct andon_sd_lib *r = bpf_ringbuf_reserve(&sd_ring, sizeof(*r), 0);
	if (!r) {
		sd__count(SD_STAT_DROPS, 1);
		bpf_map_delete_elem(&sd_exes, &key); /* so that its next exec tries again */
		return;
	}
	sd__hdr(&r->h, SD_REC_LIB, pid_tgid, -1, 0, 0, 0);
	r->addr = 0;
	r->ino = ino;
	r->dev = dev;
	bpf_ringbuf_submit(r, BPF_RB_FORCE_WAKEUP);
	sd__count(SD_STAT_EVENTS, 1);
}

/* Whether this process is traced at all (the agent itself, the pid filter). */
static __always_inline int sd__traced(__u64 pid_tgid)
{
	__u32 tgid = pid_tgid >> 32;
	if (!sd_cfg.trace_self && tgid == sd_cfg.self_tgid)
		return 0;
	if (sd_cfg.pid_filter && !bpf_map_lookup_elem(&sd_pids, &tgid))
		return 0;
	return 1;
}

/* The body of both entry points. `btf` (a constant: the branch not taken is compiled out)
 * says the program is tp_btf, whose `regs` and current task are read with direct loads;
 * raw_tp reads them with helpers. Every syscall of every process comes here, so what
 * cannot be ours returns first and cheapest: the number, then the result (a failed or
 * empty read, EAGAIN above all, is most of an event loop's syscalls), then the process. */
static __always_inline int sd__sys_exit(struct pt_regs *regs, long ret, const int btf)
{
	long nr = btf ? regs->orig_ax : BPF_CORE_READ(regs, orig_ax);

	switch (nr) {
	case NR_READ: case NR_WRITE: case NR_READV: case NR_WRITEV: case NR_SENDTO: case NR_RECVFROM:
	case NR_SENDMSG: case NR_RECVMSG: case NR_PREADV2: case NR_PWRITEV2:
	case NR_SENDMMSG: case NR_RECVMMSG: case NR_SENDFILE: case NR_SPLICE:
		if (ret <= 0)
			return 0;
		break;
	case NR_CLOSE:
		if (ret != 0)
			return 0;
		break;
	case NR_CONNECT:
		if (ret != 0 && ret != -EINPROGRESS)
			return 0;
		break;
	case NR_ACCEPT: case NR_ACCEPT4:
		if (ret < 0)
			return 0;
		break;
	case NR_EXECVE: case NR_EXECVEAT: case NR_CLOSE_RANGE:
		if (ret != 0)
			return 0;
		break;
	case NR_MMAP: { /* an executable mapping of a file (anonymous memory is most mmaps) */
		if (!sd_cfg.watch_libs || (unsigned long)ret >= (unsigned long)-4095L)
			return 0;
		long prot = btf ? regs->dx : BPF_CORE_READ(regs, dx);
		long mfd = btf ? regs->r8 : BPF_CORE_READ(regs, r8);
		if (!(prot & PROT_EXEC) || (int)mfd < 0)
			return 0;
		break;
	}
	default:
		return 0;
	}
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!sd__traced(pid_tgid))
		return 0;
	/* int $0x80 from a 64-bit task uses i386 numbers: not ours */
	__u32 status;
	if (btf) {
		status = bpf_get_current_task_btf()->thread_info.status;
	} else {
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();
		status = BPF_CORE_READ(task, thread_info.status);
	}
	if (status & TS_COMPAT)
		return 0;

	struct sdc_args r;
	if (btf) {
		r = (struct sdc_args){.a = {regs->di, regs->si, regs->dx, regs->r10, regs->r8, regs->r9}};
	} else {
		struct pt_regs pr;
		bpf_probe_read_kernel(&pr, sizeof(pr), regs);
		r = (struct sdc_args){.a = {pr.di, pr.si, pr.dx, pr.r10, pr.r8, pr.r9}};
	}
	switch (nr) {
	case NR_CLOSE:
		sd__on_close((int)r.a[0], pid_tgid);
		return 0;
	case NR_CONNECT:
		sd__on_conn((int)r.a[0], SD_ROLE_CLIENT, SD_ORIGIN_CONNECT, pid_tgid, btf);
		return 0;
	case NR_ACCEPT:
	case NR_ACCEPT4:
		sd__on_conn(ret, SD_ROLE_SERVER, SD_ORIGIN_ACCEPT, pid_tgid, btf);
		return 0;
	case NR_EXECVE:
	case NR_EXECVEAT:
		sd__on_unseen_closes(pid_tgid, 0, ~0U, SD_CLOSE_EXEC);
		if (sd_cfg.watch_libs)
			sd__on_exec(pid_tgid, btf);
		return 0;
	case NR_CLOSE_RANGE:
		if (!((__u32)r.a[2] & CLOSE_RANGE_CLOEXEC)) /* that one only marks them close-on-exec */
			sd__on_unseen_closes(pid_tgid, (__u32)r.a[0], (__u32)r.a[1], SD_CLOSE_SYSCALL);
		return 0;
	case NR_MMAP:
		sd__on_exec_map((int)r.a[4], ret, pid_tgid, btf);
		return 0;
	}
	sd__on_data(nr, &r, ret, pid_tgid, btf);
	return 0;
}

/* Two entry points for one body; the loader loads one of them: tp_btf where it loads
 * (no copy of the raw tracepoint's arguments), raw_tp where it does not. */
SEC("tp_btf/sys_exit")
int BPF_PROG(sockdata_exit_btf, struct pt_regs *regs, long ret)
{
	return sd__sys_exit(regs, ret, 1);
}

SEC("raw_tp/sys_exit")
int BPF_PROG(sockdata_exit_raw, struct pt_regs *regs, long ret)
{
	return sd__sys_exit(regs, ret, 0);
}

/* The last thread of a process exits: its fds close with no close(2). Loaded with either
 * sys_exit entry point (a process exit is rare: raw_tp's argument copy costs nothing here). */
SEC("raw_tp/sched_process_exit")
int sockdata_proc_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0; /* a thread: the process goes on */
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!sd__traced(pid_tgid))
		return 0;
	sd__on_unseen_closes(pid_tgid, 0, ~0U, SD_CLOSE_EXIT);
	__u32 tgid = pid_tgid >> 32;
	bpf_map_delete_elem(&sd_tgids, &tgid);
	return 0;
}

/* ---- TLS library calls (uprobes on libssl) ------------------------------------------ */

static __always_inline int sdt__enter(void *ssl, void *buf, void *outp, __u16 fn)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!sd__traced(pid_tgid))
		return 0;
	struct sdt_call call = {.ssl = (__u64)ssl, .buf = (__u64)buf, .outp = (__u64)outp, .fd = -1, .fn = fn};
	if (!bpf_map_update_elem(&sd_tls, &pid_tgid, &call, BPF_NOEXIST))
		__sync_fetch_and_add(&sd_tls_live, 1);
	else
		bpf_map_update_elem(&sd_tls, &pid_tgid, &call, BPF_ANY); /* a stale entry of this thread */
	return 0;
}

/* A TLS call's plaintext (size bytes at buf, moved in dir by library call fn on the socket
 * fd of this process) to the ring as the connection's next encrypted chunk. ssl: the
 * library's object for the connection, remembered on it so that its close can end the
 * object's binding; 0 for a library whose calls name their socket themselves (Go). */
static __always_inline void sdt__emit(__u64 pid_tgid, long fd, __u16 fn, __u64 buf, __u64 size, __u8 dir, __u64 ssl)
{
	struct sdc_key key = {.tgid = pid_tgid >> 32, .fd = fd};
	struct sdc_conn *c = bpf_map_lookup_elem(&sd_conns, &key);
	if (!c) {
		sd__count(SD_STAT_TLS_NO_CONN, 1);
		return;
	}
	sd__mark_ssl(c);
	if (ssl && c->tls_ssl != ssl)
		c->tls_ssl = ssl;
	__u64 pos = dir == SD_INGRESS ? __sync_fetch_and_add(&c->tls_recv, size)
				      : __sync_fetch_and_add(&c->tls_sent, size);
	__u32 cpu = bpf_get_smp_processor_id();
	struct sdc_scratch *s = bpf_map_lookup_elem(&sd_tscratch, &cpu);
	if (!s)
		return;
	struct sdc_args r = {.a = {fd, buf}};
	sd__deliver(s, c, fn, &r, size, pos, dir, 1, fd, pid_tgid);
}

/* int SSL_read(SSL *ssl, void *buf, int num) */
SEC("uprobe")
int BPF_KPROBE(sockdata_ssl_read, void *ssl, void *buf, int num)
{
	return sdt__enter(ssl, buf, NULL, SD_TLS_READ);
}

/* int SSL_write(SSL *ssl, const void *buf, int num) */
SEC("uprobe")
int BPF_KPROBE(sockdata_ssl_write, void *ssl, void *buf, int num)
{
	return sdt__enter(ssl, buf, NULL, SD_TLS_WRITE);
}

/* int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes) */
SEC("uprobe")
int BPF_KPROBE(sockdata_ssl_read_ex, void *ssl, void *buf, size_t num, size_t *readbytes)
{
	return sdt__enter(ssl, buf, readbytes, SD_TLS_READ_EX);
}

/* int SSL_write_ex(SSL *ssl, const void *buf, size_t num, size_t *written) */
SEC("uprobe")
int BPF_KPROBE(sockdata_ssl_write_ex, void *ssl, void *buf, size_t num, size_t *written)
{
	return sdt__enter(ssl, buf, written, SD_TLS_WRITE_EX);
}

/* int ssl_read_internal(SSL *s, void *buf, size_t num, size_t *readbytes): what SSL_read and
 * SSL_read_ex both call (src/andon/events/libssl_code.py finds it in the file), probed in
 * their place where it is found: a probe there costs a twelfth of one on theirs. Its calls
 * are as SSL_read_ex's: 1 on success, the count in *readbytes. */
SEC("uprobe")
int BPF_KPROBE(sockdata_ssl_read_shared, void *ssl, void *buf, size_t num, size_t *readbytes)
{
	return sdt__enter(ssl, buf, readbytes, SD_TLS_READ_SHARED);
}

/* int ssl_write_internal(SSL *s, const void *buf, size_t num, size_t *written), the same way */
SEC("uprobe")
int BPF_KPROBE(sockdata_ssl_write_shared, void *ssl, void *buf, size_t num, size_t *written)
{
	return sdt__enter(ssl, buf, written, SD_TLS_WRITE_SHARED);
}

/* OpenSSL 3.3+: int ssl_write_internal(SSL *s, const void *buf, size_t num, uint64_t flags,
 * size_t *written) (SSL_write_ex2's flags before the count's address) */
SEC("uprobe")
int BPF_KPROBE(sockdata_ssl_write_shared5, void *ssl, void *buf, size_t num, __u64 flags, size_t *written)
{
	return sdt__enter(ssl, buf, written, SD_TLS_WRITE_SHARED);
}

/* The return of any of these: the plaintext is in the stashed buffer. */
SEC("uretprobe")
int BPF_KRETPROBE(sockdata_ssl_ret, long ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct sdt_call *cp = bpf_map_lookup_elem(&sd_tls, &pid_tgid);
	if (!cp)
		return 0; /* missed entry, or not traced */
	struct sdt_call call = *cp;
	if (!bpf_map_delete_elem(&sd_tls, &pid_tgid))
		__sync_fetch_and_add(&sd_tls_live, -1);

	/* the functions return int: only eax is defined */
	int rc = (int)ret;
	__u64 size = 0;
	if (call.outp) {
		/* the _ex calls (and the shared functions) return 1 on success, the count in *outp */
		if (rc <= 0 || bpf_probe_read_user(&size, sizeof(size), (void *)call.outp))
			return 0;
	} else if (rc > 0) {
		size = rc;
	}
	/* which way the call moves plaintext: every SD_TLS_* but these is a read */
	__u8 dir = (call.fn == SD_TLS_WRITE || call.fn == SD_TLS_WRITE_EX || call.fn == SD_TLS_WRITE_SHARED)
			   ? SD_EGRESS
			   : SD_INGRESS;
	struct sdt_ssl_key sk = {.tgid = pid_tgid >> 32, .ssl = call.ssl};
	long fd = call.fd;
	if (fd >= 0) {
		if (size)
			bpf_map_update_elem(&sd_sslfd, &sk, &call.fd, BPF_ANY);
	} else {
		/* no syscall during this call: a read served from OpenSSL's buffer, or any call on
		 * a memory BIO. The fd last bound to its SSL * (by a call's syscall, or a
		 * handshake step, which also rebinds an SSL * that malloc reused); else a read
		 * decrypts what the thread read from a socket outside a call last. Not the other
		 * way round: an event loop reads a record's first bytes on one connection, then
		 * goes on reading plaintext another connection's SSL holds. A read takes the note
		 * whatever it returns, so no later call takes it stale; a write takes it only for
		 * an SSL * with no socket yet (node's client: the handshake ends inside the
		 * SSL_write that follows the read of the server's records). */
		__s32 *known = bpf_map_lookup_elem(&sd_sslfd, &sk);
		long noted = dir == SD_INGRESS || !known ? sd__tls_take_note(pid_tgid) : -1;
		if (known) {
			fd = *known;
		} else if (noted >= 0) {
			fd = noted;
			sd__tls_bind(&sk, fd);
		}
		if (fd < 0) {
			if (size)
				sd__count(SD_STAT_TLS_NO_CONN, 1);
			return 0;
		}
	}
	if (!size)
		return 0;
	sdt__emit(pid_tgid, fd, call.fn, call.buf, size, dir, call.ssl);
	return 0;
}

/* int SSL_do_handshake(SSL *s): the step of a handshake that a memory BIO's event loop
 * takes after it read the peer's records (and SSL_connect/SSL_accept take inside). Its
 * return binds the SSL * to the socket read last outside a call, so that the first
 * SSL_write of a client on a memory BIO, before any SSL_read, finds its connection. */
SEC("uprobe")
int BPF_KPROBE(sockdata_ssl_handshake, void *ssl)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!sd__traced(pid_tgid))
		return 0;
	__u64 p = (__u64)ssl;
	bpf_map_update_elem(&sd_tls_hs, &pid_tgid, &p, BPF_ANY);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(sockdata_ssl_handshake_ret, long ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 *p = bpf_map_lookup_elem(&sd_tls_hs, &pid_tgid);
	if (!p)
		return 0;
	struct sdt_ssl_key sk = {.tgid = pid_tgid >> 32, .ssl = *p};
	bpf_map_delete_elem(&sd_tls_hs, &pid_tgid);
	long noted = sd__tls_take_note(pid_tgid);
	if (noted < 0)
		return 0;
	sd__tls_bind(&sk, noted);
	struct sdc_key key = {.tgid = pid_tgid >> 32, .fd = noted};
	struct sdc_conn *c = bpf_map_lookup_elem(&sd_conns, &key);
	if (c)
		c->tls_ssl = sk.ssl;
	return 0;
}

/* ---- Go's crypto/tls (uprobes on a Go executable's own code) -------------------------
 *
 * Go links its TLS into every program and never calls OpenSSL: src/andon/events/go_tls.py
 * finds crypto/tls.(*Conn).Read and .Write in an executable's symbols and decodes them.
 * No return probes: a uretprobe replaces the return address on the goroutine's stack,
 * and Go's runtime, which walks and moves those stacks, dies on it. A probe on a ret
 * instruction works, but the kernel cannot emulate a ret and single-steps it, a second
 * trap (~13 us a call on this machine, against ~1 us for an emulated call or jump). So:
 *
 * - Write(b []byte): its plaintext is all of b, known at the entry (Write returns less
 *   only with an error, after which the connection is broken);
 * - Read(b []byte): the entry notes the call; the plaintext is what Read copies into b
 *   from the record it decrypted, `copy(b, c.input...)`, compiled to one call of
 *   runtime.memmove (to in rax, from in rbx, n in rcx): probed at that call instruction
 *   (emulated), it gives the bytes and their count. Where Read does not have exactly one
 *   such call, its rets are probed instead (sockdata_go_tls_ret).
 *
 * Entry probes sit on the jbe of Go's stack check where the function starts with one
 * (emulated; the cmp before it is not).
 *
 * Go's register ABI (Go 1.17+, amd64): the receiver (*tls.Conn) in rax, the []byte's
 * pointer and length in rbx and rcx; at a ret, the count returned in rax. r14 is the
 * running goroutine (its g), in Go code always, so a Read is keyed by (tgid, g): a
 * goroutine parked inside Read (no data yet) comes back on whichever thread the scheduler
 * gives it.
 *
 * The socket is named by the Conn itself, no syscall needed: its first field is the
 * net.Conn it wraps, an interface (itab, data). When the itab is the one of *net.TCPConn
 * or *net.UnixConn, data -> {fd *netFD} -> netFD.pfd (poll.FD) -> Sysfd, 16 bytes in
 * (after poll.fdMutex's state, rsema and wsema); the same layout from Go 1.9 to 1.25.
 * The two itabs' addresses come in the entry probe's cookie, as signed 32-bit distances
 * from the probed instruction (so position-independent executables need nothing more);
 * any other net.Conn (a user's wrapper) is counted and not copied. */

struct sdg_key {
	__u32 tgid;
	__u32 _pad;
	__u64 g; /* the goroutine's runtime.g */
};

struct sdg_call {
	__u64 buf; /* Read's buffer (for the ret probes) */
	__s32 fd;
	__u32 _pad;
};

/* a Read in progress, entry to copy (or ret). LRU: a Read that returns without copying (an
 * error, EOF) leaves its entry until the goroutine's next Read replaces it, or it ages out */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct sdg_key);
	__type(value, struct sdg_call);
} sd_gotls SEC(".maps");

#define SDG_SYSFD_OFF 16 /* poll.FD.Sysfd */

/* at an entry probe: the socket fd of the *tls.Conn in rax; -1 for a process not traced, -2
 * for a Conn with no socket to name */
static __always_inline long sdg__fd(struct pt_regs *ctx, __u64 pid_tgid)
{
	if (!sd__traced(pid_tgid))
		return -1;
	__u64 iface[2]; /* tls.Conn.conn: net.Conn's itab and data */
	if (bpf_probe_read_user(iface, sizeof(iface), (void *)ctx->ax))
		return -2;
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u64 ip = ctx->ip;
	__u64 tcp = ip + (__s64)(__s32)(__u32)cookie;
	__u64 unx = ip + (__s64)(__s32)(__u32)(cookie >> 32);
	if (!iface[0] || (iface[0] != tcp && iface[0] != unx)) {
		sd__count(SD_STAT_GO_TLS_OTHER_CONN, 1);
		return -2;
	}
	__u64 netfd = 0;
	__s64 sysfd = -1;
	if (bpf_probe_read_user(&netfd, sizeof(netfd), (void *)iface[1]) || !netfd ||
	    bpf_probe_read_user(&sysfd, sizeof(sysfd), (void *)(netfd + SDG_SYSFD_OFF)) || sysfd < 0 ||
	    sysfd > 0x7fffffff)
		return -2;
	return sysfd;
}

/* func (c *Conn) Read(b []byte) (int, error): note the call */
SEC("uprobe")
int sockdata_go_tls_read(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	long fd = sdg__fd(ctx, pid_tgid);
	if (fd == -1)
		return 0;
	struct sdg_key k = {.tgid = pid_tgid >> 32, .g = ctx->r14};
	if (fd < 0) {
		/* no socket: this Read's copy must not find the goroutine's last Read on a socket
		 * (one that returned an error, and so never copied) and take its fd */
		bpf_map_delete_elem(&sd_gotls, &k);
		return 0;
	}
	struct sdg_call call = {.buf = ctx->bx, .fd = fd};
	bpf_map_update_elem(&sd_gotls, &k, &call, BPF_ANY);
	return 0;
}

/* The end of a Read this goroutine's entry noted: at its copy (at_ret 0) the plaintext is
 * memmove's (from rbx, n rcx); at a ret (1), rax bytes in the buffer the entry noted */
static __always_inline int sdg__read_done(struct pt_regs *ctx, const int at_ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct sdg_key k = {.tgid = pid_tgid >> 32, .g = ctx->r14};
	struct sdg_call *cp = bpf_map_lookup_elem(&sd_gotls, &k);
	if (!cp)
		return 0; /* not traced, or the entry was not for a socket */
	long fd = cp->fd;
	__u64 buf = at_ret ? cp->buf : ctx->bx;
	long n = at_ret ? (long)ctx->ax : (long)ctx->cx;
	bpf_map_delete_elem(&sd_gotls, &k);
	if (n > 0)
		sdt__emit(pid_tgid, fd, SD_TLS_GO_READ, buf, n, SD_INGRESS, 0);
	return 0;
}

/* Read's copy of plaintext into b: runtime.memmove(to rax, from rbx, n rcx), at its call */
SEC("uprobe")
int sockdata_go_tls_read_copy(struct pt_regs *ctx)
{
	return sdg__read_done(ctx, 0);
}

/* at each ret of a Read probed that way */
SEC("uprobe")
int sockdata_go_tls_ret(struct pt_regs *ctx)
{
	return sdg__read_done(ctx, 1);
}

/* func (c *Conn) Write(b []byte) (int, error): all of b, at the entry */
SEC("uprobe")
int sockdata_go_tls_write(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	long fd = sdg__fd(ctx, pid_tgid);
	long n = (long)ctx->cx;
	if (fd < 0 || n <= 0)
		return 0;
	sdt__emit(pid_tgid, fd, SD_TLS_GO_WRITE, ctx->bx, n, SD_EGRESS, 0);
	return 0;
}
