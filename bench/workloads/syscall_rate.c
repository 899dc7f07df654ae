/* syscall_rate RATE SECONDS: issue close(-1) at RATE per second for SECONDS.
 *
 * close(-1) fails at once with EBADF, so it is the cheapest syscall a tracer still sees
 * (andon's sys_exit hook and a sys_enter_close tracepoint both fire for it). Pacing: the
 * loop compares what it has issued with RATE * elapsed every BATCH calls (clock_gettime
 * is vDSO, not a syscall) and sleeps only when more than a millisecond ahead, so a rate
 * the machine cannot reach just runs flat out. Prints
 * "issued=<n> elapsed_ns=<ns> target_rate=<RATE> rate=<achieved>". */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64

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
	long long issued = 0;
	long long t0 = now_ns(), end = t0 + (long long)(seconds * 1e9), t = t0;

	while (t < end) {
		for (int i = 0; i < BATCH; i++)
			close(-1);
		issued += BATCH;
		t = now_ns();
		double due = (t - t0) * rate / 1e9; /* how many should have gone by now */
		double ahead_ns = (issued - due) / rate * 1e9;
		if (ahead_ns > 1e6) {
			struct timespec ts = {0, (long)ahead_ns};
			nanosleep(&ts, NULL);
			t = now_ns();
		}
	}
	long long elapsed = t - t0;
	printf("issued=%lld elapsed_ns=%lld target_rate=%.0f rate=%.0f\n", issued, elapsed, rate,
	       issued * 1e9 / elapsed);
	return 0;
}
