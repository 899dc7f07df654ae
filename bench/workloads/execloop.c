/* execloop N [PATH]: fork, execve(PATH, default "/bin/true"), wait; N times.
 *
 * Prints "iterations=<done> elapsed_ns=<ns>". Stops early after MAX_SECONDS (a short run
 * shows as iterations < N). fork, not vfork or posix_spawn: it is what shells and most
 * daemons do, and it is the path sched_process_exec tracers see most. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_SECONDS 120

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc != 2 && argc != 3) {
		fprintf(stderr, "usage: %s N [PATH]\n", argv[0]);
		return 2;
	}
	long long n = atoll(argv[1]);
	long long failed = 0, i;
	long long t0 = now_ns(), deadline = t0 + MAX_SECONDS * 1000000000LL;
	const char *path = argc == 3 ? argv[2] : "/bin/true";
	char *const child_argv[] = {(char *)path, NULL};
	char *const child_envp[] = {NULL};

	for (i = 0; i < n && now_ns() < deadline; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			perror("fork");
			return 1;
		}
		if (pid == 0) {
			execve(path, child_argv, child_envp);
			_exit(127); /* exec failed */
		}
		int status;
		if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
			failed++;
	}
	long long t1 = now_ns();
	printf("iterations=%lld elapsed_ns=%lld failed=%lld\n", i, t1 - t0, failed);
	return failed ? 1 : 0;
}
