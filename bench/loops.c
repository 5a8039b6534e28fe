/* Syscall loops for bench/denials.py and bench/report.py: the per-operation cost the daemons
 * add.
 *   loops open PATH N   open(PATH) N times as uid/gid 65534 (refused: EACCES)
 *   loops getppid N     getppid() N times (a syscall no probe looks at)
 * Prints nanoseconds per operation as "<cpu> <wall>": this thread's CPU time (user + system:
 * it includes the BPF programs that run in its syscalls, not the time it waits for a busy CPU)
 * and the wall clock. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void report(double cpu, double wall, long n)
{
    printf("%.1f %.1f\n", (now(CLOCK_THREAD_CPUTIME_ID) - cpu) / n, (now(CLOCK_MONOTONIC) - wall) / n);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: loops open PATH N | loops getppid N\n");
        return 2;
    }
    if (strcmp(argv[1], "open") == 0 && argc == 4) {
        const char *path = argv[2];
        long n = atol(argv[3]);
        if (setgroups(0, NULL) || setgid(65534) || setuid(65534)) {
            perror("drop privileges");
            return 1;
        }
        double cpu = now(CLOCK_THREAD_CPUTIME_ID), wall = now(CLOCK_MONOTONIC);
        for (long i = 0; i < n; i++) {
            int fd = open(path, O_RDONLY);
            if (fd >= 0) {
                fprintf(stderr, "open succeeded: the file must refuse uid 65534\n");
                return 1;
            }
        }
        report(cpu, wall, n);
        return 0;
    }
    if (strcmp(argv[1], "getppid") == 0) {
        long n = atol(argv[2]);
        double cpu = now(CLOCK_THREAD_CPUTIME_ID), wall = now(CLOCK_MONOTONIC);
        for (long i = 0; i < n; i++)
            syscall(SYS_getppid);
        report(cpu, wall, n);
        return 0;
    }
    fprintf(stderr, "unknown loop %s\n", argv[1]);
    return 2;
}
