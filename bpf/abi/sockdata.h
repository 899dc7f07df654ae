/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The wire ABI of the socket data sensor (bpf/net/sockdata.bpf.c), and nothing else.
 *
 * The sensor has its own ring buffer, apart from the security event ring: its records
 * have variable sizes (a data record is its header plus the bytes copied), so each ring
 * record is exactly one of the structs below, told apart by sd_hdr.type. Python's
 * mirror is src/andon/events/sockdata.py; tests/kernel/test_sockdata.py compares the two
 * layouts with the BTF of the built object.
 *
 * A connection is (tgid, fd) from the moment it is seen (connect, accept, or its first
 * read/write) to its close; conn_id is unique for the life of the loaded object.
 */
#ifndef ANDON_ABI_SOCKDATA_H
#define ANDON_ABI_SOCKDATA_H

#define SD_COPY_MAX 16384   /* largest copy of one syscall's data (load-time bound <= this) */
#define SD_PROTO_MAX 16     /* entries in the sd_protos map: Pixie's traffic_protocol_t */

/* record types: field `type` of struct andon_sd_hdr */
enum sd_rec_type {
	SD_REC_OPEN = 1,  /* struct andon_sd_open: a connection was seen for the first time */
	SD_REC_DATA = 2,  /* struct andon_sd_data: one read or write of an enabled protocol */
	SD_REC_CLOSE = 3, /* struct andon_sd_close: close(2) of a tracked connection's fd */
	SD_REC_LIB = 4,   /* struct andon_sd_lib: a libssl file was mapped executable, or (addr 0) an
			   * executable new to the sensor ran (with watch_libs) */
};

/* where a connection was first seen: field `origin` of struct andon_sd_open */
enum sd_origin {
	SD_ORIGIN_CONNECT = 1, /* connect(2) returned 0 or EINPROGRESS */
	SD_ORIGIN_ACCEPT = 2,  /* accept(2)/accept4(2) returned this fd */
	SD_ORIGIN_DATA = 3,    /* a read/write on a socket we had not seen before */
};

/* why a connection record ended: field `reason` of struct andon_sd_close */
enum sd_close_reason {
	SD_CLOSE_SYSCALL = 1, /* close(2) on the fd returned 0 */
	SD_CLOSE_REUSED = 2,  /* the fd now names another socket: the old one went unseen */
	SD_CLOSE_EXEC = 3,    /* execve(2) closed the fd (close-on-exec) */
	SD_CLOSE_EXIT = 4,    /* the process exited with the fd open */
};

/* flags: field `flags` of struct andon_sd_data */
#define SD_F_TRUNCATED 0x01 /* size > copied: the copy bound cut the chunk */
#define SD_F_ADDR 0x02      /* raddr/rport/rfamily hold this datagram's peer (UDP) */
#define SD_F_ENCRYPTED 0x04 /* plaintext of a TLS library call, not the socket bytes: pos counts
			     * plaintext bytes, apart from the socket's own */
#define SD_F_NOCOPY 0x08    /* bytes sendfile(2) or splice(2) moved between the socket and a file or
			     * pipe: never in the process's memory, so copied is 0 and size says
			     * how many (the stream's positions stay whole) */

/* the TLS library call of a record with SD_F_ENCRYPTED: field `nr` of struct andon_sd_data */
#define SD_TLS_READ 1     /* SSL_read */
#define SD_TLS_WRITE 2    /* SSL_write */
#define SD_TLS_READ_EX 3  /* SSL_read_ex */
#define SD_TLS_WRITE_EX 4 /* SSL_write_ex */
#define SD_TLS_READ_SHARED 5  /* SSL_read or SSL_read_ex: the function both call, probed in their place
			       * (OpenSSL's ssl_read_internal: its entry is emulated, theirs single-stepped) */
#define SD_TLS_WRITE_SHARED 6 /* SSL_write or SSL_write_ex, the same way (ssl_write_internal) */
#define SD_TLS_GO_READ 7      /* Go's crypto/tls.(*Conn).Read */
#define SD_TLS_GO_WRITE 8     /* Go's crypto/tls.(*Conn).Write */

/* Pixie's endpoint_role_t */
#define SD_ROLE_UNKNOWN 0
#define SD_ROLE_CLIENT 1
#define SD_ROLE_SERVER 2

/* direction, from the traced process */
#define SD_EGRESS 0
#define SD_INGRESS 1

/* protocol: Pixie's traffic_protocol_t (the ones inferred here) */
#define SD_PROTO_UNKNOWN 0
#define SD_PROTO_HTTP 1
#define SD_PROTO_HTTP2 2
#define SD_PROTO_MYSQL 3
#define SD_PROTO_PGSQL 5
#define SD_PROTO_DNS 6
#define SD_PROTO_REDIS 7

/* counters, per CPU, in the sd_stats map */
enum sd_stat {
	SD_STAT_EVENTS = 0,        /* records written to the ring */
	SD_STAT_DROPS = 1,         /* records lost: the ring was full */
	SD_STAT_SKIPPED_BYTES = 2, /* bytes of chunks not copied: protocol unknown or disabled */
	SD_STAT_SKIPPED_CHUNKS = 3,/* chunks not copied, same reason */
	SD_STAT_TRUNCATED = 4,     /* data records cut at the copy bound */
	SD_STAT_READ_ERRORS = 5,   /* user memory that could not be read */
	SD_STAT_CONN_FULL = 6,     /* connections not tracked: the table was full */
	SD_STAT_DROPPED_BYTES = 7, /* bytes of data records lost to a full ring */
	SD_STAT_TLS_CHUNKS = 8,    /* plaintext records of TLS library calls written */
	SD_STAT_TLS_CIPHER_BYTES = 9, /* bytes of TLS ciphertext on sockets not copied */
	SD_STAT_TLS_NO_CONN = 10,  /* TLS calls whose socket was never learned */
	SD_STAT_NOCOPY_CHUNKS = 11, /* records of sendfile/splice chunks written (SD_F_NOCOPY) */
	SD_STAT_TLS_BIO_BINDS = 12, /* SSL * bound to the socket its thread read TLS records from outside
				     * a call (memory BIO; handshake steps) */
	SD_STAT_GO_TLS_OTHER_CONN = 13, /* Go TLS calls on a net.Conn that is not a *net.TCPConn or
					 * *net.UnixConn (no socket to name): not copied */
	SD_STAT_MAX = 14,
};

struct andon_sd_hdr {
	/* field 0: type (u16) enum sd_rec_type */
	__u16 type;
	/* field 1: role (u8) SD_ROLE_*, as known when the record was written */
	__u8 role;
	/* field 2: protocol (u8) SD_PROTO_*, 0 until inferred */
	__u8 protocol;
	/* field 3: pid (u32) thread group id */
	__u32 pid;
	/* field 4: tid (u32) thread id */
	__u32 tid;
	/* field 5: fd (s32) */
	__s32 fd;
	/* field 6: ts (u64) boot-time ns at syscall exit */
	__u64 ts;
	/* field 7: conn_id (u64) unique per connection while the object is loaded */
	__u64 conn_id;
};

#define SD_UNIX_PATH_MAX 108 /* sizeof(sockaddr_un.sun_path) */

struct andon_sd_open {
	struct andon_sd_hdr h;
	/* field 1: family (u16) AF_INET 2 / AF_INET6 10 / AF_UNIX 1 (a stream socket) */
	__u16 family;
	/* field 2: l4 (u16) IPPROTO_TCP 6 / IPPROTO_UDP 17; 0 for AF_UNIX */
	__u16 l4;
	/* field 3: lport (u16) host order */
	__u16 lport;
	/* field 4: rport (u16) host order, 0 for an unconnected UDP socket */
	__u16 rport;
	/* field 5: laddr (u8[16]) IPv4 in the first 4 bytes */
	__u8 laddr[16];
	/* field 6: raddr (u8[16]) */
	__u8 raddr[16];
	/* field 7: netns (u32) inode number of the socket's network namespace */
	__u32 netns;
	/* field 8: origin (u32) enum sd_origin */
	__u32 origin;
	/* field 9: comm (char[16]) the process's name: its thread group leader's comm */
	char comm[16];
	/* field 10: tcomm (char[16]) the name of the thread that made the record */
	char tcomm[16];
	/* field 11: path_len (u32) AF_UNIX: bytes of path; 0 for an unnamed pair (socketpair) */
	__u32 path_len;
	/* field 12: path (u8[SD_UNIX_PATH_MAX]) AF_UNIX: the address the server end is bound to (the
	 * listening socket's; for a client, its peer's), sun_path as the kernel holds it: a
	 * leading NUL for an abstract name */
	__u8 path[SD_UNIX_PATH_MAX];
	/* field 13: sock_id (u64) the kernel socket's identity while it lives (its struct sock) */
	__u64 sock_id;
	/* field 14: peer_id (u64) AF_UNIX: the sock_id of the other end (unix_sock.peer), 0 when
	 * there is none yet; 0 for inet (its ends pair by their addresses and ports) */
	__u64 peer_id;
};

struct andon_sd_data {
	struct andon_sd_hdr h;
	/* field 1: pos (u64) bytes of this direction on this connection before this chunk */
	__u64 pos;
	/* field 2: size (u32) bytes the syscall moved */
	__u32 size;
	/* field 3: copied (u32) bytes in data[] (<= size, <= the copy bound) */
	__u32 copied;
	/* field 4: nr (u16) x86_64 syscall number; with SD_F_ENCRYPTED the library call, SD_TLS_* */
	__u16 nr;
	/* field 5: direction (u8) SD_EGRESS / SD_INGRESS */
	__u8 direction;
	/* field 6: flags (u8) SD_F_* */
	__u8 flags;
	/* field 7: rport (u16) with SD_F_ADDR: this datagram's peer port */
	__u16 rport;
	/* field 8: rfamily (u16) with SD_F_ADDR */
	__u16 rfamily;
	/* field 9: raddr (u8[16]) with SD_F_ADDR */
	__u8 raddr[16];
	/* field 10: data (u8[copied]) */
	__u8 data[];
};

struct andon_sd_close {
	struct andon_sd_hdr h;
	/* field 1: bytes_sent (u64) all bytes written on the connection while traced */
	__u64 bytes_sent;
	/* field 2: bytes_recv (u64) all bytes read */
	__u64 bytes_recv;
	/* field 3: reason (u32) enum sd_close_reason */
	__u32 reason;
	/* field 4: _pad (u32) */
	__u32 _pad;
};

/* A process mapped a file named libssl.so.* or libssl-* executable (mmap(2) with PROT_EXEC and an fd): the
 * reader finds the file in /proc/<pid>/maps and puts the TLS uprobes on it, if it is new.
 * Header fields role, protocol and conn_id are 0; fd is the mmap's fd. */
struct andon_sd_lib {
	struct andon_sd_hdr h;
	/* field 1: addr (u64) where the mapping starts (mmap's result) */
	__u64 addr;
	/* field 2: ino (u64) the mapped file's inode number */
	__u64 ino;
	/* field 3: dev (u64) its filesystem's device, the kernel's encoding (major << 20 | minor) */
	__u64 dev;
};

/* load-time settings, in .rodata */
struct andon_sd_config {
	/* field 0: self_tgid (u32) the agent's own pid: never traced */
	__u32 self_tgid;
	/* field 1: max_copy (u32) bytes copied per syscall, <= SD_COPY_MAX */
	__u32 max_copy;
	/* field 2: infer_tries (u32) chunks tried for inference before a connection is
	 * given up as unknown */
	__u32 infer_tries;
	/* field 3: trace_self (u32) 1: also trace self_tgid (tests) */
	__u32 trace_self;
	/* field 4: pid_filter (u32) 1: trace only the tgids in the sd_pids map */
	__u32 pid_filter;
	/* field 5: wakeup_shift (u32) 0: the kernel's adaptive wake-up (the reader is woken by
	 * the first record after it had caught up); N: no wake-up but one each time the backlog
	 * crosses a multiple of 1 << N bytes (the reader also reads on a timer) */
	__u32 wakeup_shift;
	/* field 6: watch_libs (u32) 1: send a SD_REC_LIB record when a traced process maps a
	 * libssl file executable (set when the TLS uprobes are loaded) */
	__u32 watch_libs;
	/* field 7: unix_sockets (u32) 1: also trace unix stream sockets (AF_UNIX, SOCK_STREAM) */
	__u32 unix_sockets;
};

#endif
