/* openclose_rate RATE SECONDS: openat("/etc/hostname") + close, RATE pairs per second,
 * for SECONDS.
 *
 * The paced form of openclose, for finding the highest rate a consumer keeps up with
 * (each pair is two events for a tracer of openat and close). Pacing as in syscall_rate:
 * every BATCH pairs the loop compares what it has done with RATE * elapsed and sleeps
 * only when more than a millisecond ahead, so a rate the machine cannot reach runs flat
 * out and the printed rate says so. Prints
 * "iterations=<pairs> elapsed_ns=<ns> target_rate=<RATE> rate=<achieved pairs/s> failed=<n>". */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define BATCH 32

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s RATE SECONDS\n", argv[0]);
		return 2;
	}
	double rate = atof(argv[1]);
	double seconds = atof(argv[2]);
	if (rate <= 0 || seconds <= 0 || seconds > 600) {
		fprintf(stderr, "RATE must be > 0 and 0 < SECONDS <= 600\n");
		return 2;
	}
	long long done = 0, failed = 0;
	long long t0 = now_ns(), end = t0 + (long long)(seconds * 1e9), t = t0;

	while (t < end) {
		for (int i = 0; i < BATCH; i++) {
			int fd = openat(AT_FDCWD, "/etc/hostname", O_RDONLY);
			if (fd < 0)
				failed++;
			else
				close(fd);
		}
		done += BATCH;
		t = now_ns();
		double due = (t - t0) * rate / 1e9; /* how many should have gone by now */
		double ahead_ns = (done - due) / rate * 1e9;
		if (ahead_ns > 1e6) {
			struct timespec ts = {0, (long)(ahead_ns < 9e8 ? ahead_ns : 9e8)};
			nanosleep(&ts, NULL);
			t = now_ns();
		}
	}
	long long elapsed = t - t0;
	printf("iterations=%lld elapsed_ns=%lld target_rate=%.0f rate=%.0f failed=%lld\n", done, elapsed, rate,
	       done * 1e9 / elapsed, failed);
	return failed ? 1 : 0;
}
