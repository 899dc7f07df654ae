/* udp_flood DST_IP PORT COUNT: COUNT 64-byte UDP datagrams to DST_IP:PORT as fast as
 * sendmmsg(2) takes them (batches of 64), then prints "sent N seconds S". Bounded by COUNT
 * (at most 20 million) and by 30 seconds. bench/netpolicy.py runs it inside a test namespace
 * to time the host firewall's drops without Python's per-packet cost in the sender. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	struct sockaddr_in dst = { .sin_family = AF_INET };
	struct mmsghdr msgs[BATCH];
	struct iovec iov;
	char payload[64];
	long count, sent = 0;
	double t0, t1;
	int fd, i;

	if (argc != 4) {
		fprintf(stderr, "usage: %s DST_IP PORT COUNT\n", argv[0]);
		return 2;
	}
	if (inet_pton(AF_INET, argv[1], &dst.sin_addr) != 1) {
		fprintf(stderr, "udp_flood: bad address %s\n", argv[1]);
		return 2;
	}
	dst.sin_port = htons(atoi(argv[2]));
	count = atol(argv[3]);
	if (count < 1 || count > 20000000) {
		fprintf(stderr, "udp_flood: COUNT must be 1..20000000\n");
		return 2;
	}
	fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0) {
		perror("udp_flood: socket");
		return 1;
	}
	memset(payload, 'z', sizeof(payload));
	iov.iov_base = payload;
	iov.iov_len = sizeof(payload);
	memset(msgs, 0, sizeof(msgs));
	for (i = 0; i < BATCH; i++) {
		msgs[i].msg_hdr.msg_name = &dst;
		msgs[i].msg_hdr.msg_namelen = sizeof(dst);
		msgs[i].msg_hdr.msg_iov = &iov;
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	t0 = now();
	while (sent < count && now() - t0 < 30.0) {
		int n = count - sent < BATCH ? (int)(count - sent) : BATCH;
		int r = sendmmsg(fd, msgs, n, 0);

		if (r < 0) {
			if (errno == EAGAIN || errno == ENOBUFS || errno == EINTR)
				continue;
			perror("udp_flood: sendmmsg");
			return 1;
		}
		sent += r;
	}
	t1 = now();
	printf("sent %ld seconds %.6f\n", sent, t1 - t0);
	close(fd);
	return 0;
}
