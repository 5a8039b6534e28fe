/* Loops for bench/namespaces.py: what the namespace probe adds to process and thread creation.
 *   ns_loops fork N      fork() + _exit(0) + waitpid() N times (clone without new namespaces)
 *   ns_loops thread N    pthread_create() + pthread_join() N times (clone3, flags read by the probe)
 *   ns_loops unshare N   unshare(CLONE_NEWUTS) N times (a recorded namespace change each; root)
 * Prints "<cpu> <wall>": nanoseconds per operation, this thread's CPU time (user + system,
 * including BPF programs run in its syscalls) and wall-clock time. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double ns(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static void *nothing(void *arg) { return arg; }

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: ns_loops fork|thread|unshare N\n");
        return 2;
    }
    long n = atol(argv[2]);
    double cpu = ns(CLOCK_THREAD_CPUTIME_ID), wall = ns(CLOCK_MONOTONIC);
    for (long i = 0; i < n; i++) {
        if (strcmp(argv[1], "fork") == 0) {
            pid_t pid = fork();
            if (pid == 0)
                _exit(0);
            if (pid < 0 || waitpid(pid, NULL, 0) != pid) {
                perror("fork");
                return 1;
            }
        } else if (strcmp(argv[1], "thread") == 0) {
            pthread_t t;
            if (pthread_create(&t, NULL, nothing, NULL) != 0 || pthread_join(t, NULL) != 0) {
                perror("pthread");
                return 1;
            }
        } else if (strcmp(argv[1], "unshare") == 0) {
            if (unshare(CLONE_NEWUTS) != 0) {
                perror("unshare");
                return 1;
            }
        } else {
            fprintf(stderr, "unknown loop %s\n", argv[1]);
            return 2;
        }
    }
    printf("%.1f %.1f\n", (ns(CLOCK_THREAD_CPUTIME_ID) - cpu) / n, (ns(CLOCK_MONOTONIC) - wall) / n);
    return 0;
}
