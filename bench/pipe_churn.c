/* Pipe churn: create and close a pipe N times (about nine kernel allocations per round), then
 * print nanoseconds per round as "<cpu> <wall>". CPU time (this thread's, user + system) includes
 * the BPF programs that run in its syscalls but not the time it waits for a busy CPU, so it is
 * the figure to compare on a shared machine. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double ns(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 200000;
    int fds[2];

    double cpu = ns(CLOCK_THREAD_CPUTIME_ID), wall = ns(CLOCK_MONOTONIC);
    for (long i = 0; i < n; i++) {
        if (pipe(fds) != 0) {
            perror("pipe");
            return 1;
        }
        close(fds[0]);
        close(fds[1]);
    }
    cpu = ns(CLOCK_THREAD_CPUTIME_ID) - cpu;
    wall = ns(CLOCK_MONOTONIC) - wall;
    printf("%.1f %.1f\n", cpu / n, wall / n);
    return 0;
}
