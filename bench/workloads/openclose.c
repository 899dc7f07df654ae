/* openclose N: openat("/etc/hostname", O_RDONLY) + close, N times.
 *
 * Prints "iterations=<done> elapsed_ns=<ns>" for the loop alone (process start-up is
 * not timed). The loop stops early after MAX_SECONDS so a pathological tracer cannot
 * hang a benchmark; a short run shows up as iterations < N. Built -static so the
 * dynamic loader's own opens do not add events before the loop. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define MAX_SECONDS 120
#define CHECK_EVERY 4096 /* iterations between clock reads (clock_gettime is vDSO, not a syscall) */

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s N\n", argv[0]);
		return 2;
	}
	long long n = atoll(argv[1]);
	long long failed = 0, i;
	long long t0 = now_ns(), deadline = t0 + MAX_SECONDS * 1000000000LL;

	for (i = 0; i < n; i++) {
		int fd = openat(AT_FDCWD, "/etc/hostname", O_RDONLY);
		if (fd < 0)
			failed++;
		else
			close(fd);
		if (i % CHECK_EVERY == CHECK_EVERY - 1 && now_ns() > deadline) {
			i++;
			break;
		}
	}
	long long t1 = now_ns();
	printf("iterations=%lld elapsed_ns=%lld failed=%lld\n", i, t1 - t0, failed);
	return failed ? 1 : 0;
}
