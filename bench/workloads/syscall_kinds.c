/* syscall_kinds N [KIND]: the cost of one syscall of each kind a socket data hook sees, N
 * calls of each (with KIND, of that kind only; the others print 0), printed as one JSON line
 * of nanoseconds per call:
 *   getppid      a syscall the hook does not trace (it returns at the number)
 *   read_eagain  read(2) of an empty non-blocking pipe: a traced number, failed
 *   write_null   write(2) of 8 bytes to /dev/null: a traced number, fd not a socket
 *   http_pair    write(2) of a 64-byte HTTP request on one end of a loopback TCP
 *                connection + read(2) of it on the other: both captured
 *   http_iov2    the same request by sendmsg(2) as 2 iovecs, + read(2)
 *   http_iov32   the same request by sendmsg(2) as 32 iovecs of 2 bytes (as gRPC's C core
 *                writes a header block, one iovec a string), + read(2)
 * Bounded by N (at most 10 million). Used by bench/sock_hook.py. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

static int tcp_pair(int *cli, int *srv)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int one = 1, l = socket(AF_INET, SOCK_STREAM, 0);

	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) || listen(l, 1) ||
	    getsockname(l, (struct sockaddr *)&a, &len))
		return -1;
	*cli = socket(AF_INET, SOCK_STREAM, 0);
	if (*cli < 0 || connect(*cli, (struct sockaddr *)&a, sizeof(a)))
		return -1;
	*srv = accept(l, NULL, NULL);
	close(l);
	setsockopt(*cli, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return *srv < 0 ? -1 : 0;
}

/* n requests of 64 bytes from cli, as k iovecs by sendmsg (k 0: write), each read on srv */
static int http_pairs(int cli, int srv, const char *req, long n, int k)
{
	struct iovec iov[32];
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = k };
	char buf[64];
	long i;

	for (i = 0; i < k; i++) {
		iov[i].iov_base = (char *)req + i * (64 / k);
		iov[i].iov_len = 64 / k;
	}
	for (i = 0; i < n; i++) {
		size_t got = 0;
		if ((k ? sendmsg(cli, &mh, 0) : write(cli, req, 64)) != 64)
			return -1;
		while (got < 64) {
			ssize_t r = read(srv, buf, 64 - got);
			if (r <= 0)
				return -1;
			got += r;
		}
	}
	return 0;
}

static int is_kind(const char *s)
{
	static const char *kinds[] = { "getppid", "read_eagain", "write_null", "http_pair", "http_iov2", "http_iov32" };
	for (unsigned i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
		if (!strcmp(s, kinds[i]))
			return 1;
	return 0;
}

int main(int argc, char **argv)
{
	const char req[] = "GET /syscall-kinds HTTP/1.1\r\nHost: x\r\nUser-Agent: andon-bench\r\n\r\n";
	char buf[256] = { 0 };
	long n = argc >= 2 ? atol(argv[1]) : 0, i;
	const char *only = argc == 3 ? argv[2] : NULL;
	long n0 = n, n1 = n, n2 = n, n3 = n / 4, n4 = n / 4, n5 = n / 4;
	int p[2], dn, cli, srv;
	double t0, t1, t2, t3, t4, t5, t6;

	if (n < 1 || n > 10000000 || argc > 3 || (only && !is_kind(only))) {
		fprintf(stderr, "usage: %s N (1..10000000) [getppid|read_eagain|write_null|http_pair|http_iov2|http_iov32]\n",
			argv[0]);
		return 2;
	}
	if (only) {
		n0 = strcmp(only, "getppid") ? 0 : n0;
		n1 = strcmp(only, "read_eagain") ? 0 : n1;
		n2 = strcmp(only, "write_null") ? 0 : n2;
		n3 = strcmp(only, "http_pair") ? 0 : n3;
		n4 = strcmp(only, "http_iov2") ? 0 : n4;
		n5 = strcmp(only, "http_iov32") ? 0 : n5;
	}
	if (pipe2(p, O_NONBLOCK) || (dn = open("/dev/null", O_WRONLY)) < 0 || tcp_pair(&cli, &srv)) {
		perror("syscall_kinds: setup");
		return 1;
	}
	t0 = now();
	for (i = 0; i < n0; i++)
		syscall(SYS_getppid);
	t1 = now();
	for (i = 0; i < n1; i++)
		if (read(p[0], buf, 8) != -1)
			return 1;
	t2 = now();
	for (i = 0; i < n2; i++)
		if (write(dn, buf, 8) != 8)
			return 1;
	t3 = now();
	if (http_pairs(cli, srv, req, n3, 0))
		return 1;
	t4 = now();
	if (http_pairs(cli, srv, req, n4, 2))
		return 1;
	t5 = now();
	if (http_pairs(cli, srv, req, n5, 32))
		return 1;
	t6 = now();
	printf("{\"getppid\": %.1f, \"read_eagain\": %.1f, \"write_null\": %.1f, \"http_pair\": %.1f, "
	       "\"http_iov2\": %.1f, \"http_iov32\": %.1f}\n",
	       n0 ? (t1 - t0) / n0 : 0, n1 ? (t2 - t1) / n1 : 0, n2 ? (t3 - t2) / n2 : 0, n3 ? (t4 - t3) / n3 : 0,
	       n4 ? (t5 - t4) / n4 : 0, n5 ? (t6 - t5) / n5 : 0);
	return 0;
}
