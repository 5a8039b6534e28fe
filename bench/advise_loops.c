/* Loops for bench/advise.py: what `advise` adds to syscalls while it runs.
 *   advise_loops getppid N     getppid() N times (counted by the syscall bitmap only)
 *   advise_loops open PATH N   open(PATH) N times as uid/gid 65534, refused with EACCES (the
 *                              open path: a failed capability check, a refusal counted)
 *   advise_loops mmap N        mmap + munmap of one private writable page N times as root (one
 *                              successful no-audit CAP_SYS_ADMIN check each: the kernel stack is
 *                              taken for every one)
 * Prints "<cpu> <wall>": nanoseconds per operation, this thread's CPU time (user + system,
 * including BPF programs run in its syscalls) and wall-clock time. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
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
    int open_loop = argc == 4 && strcmp(argv[1], "open") == 0;
    if (!open_loop && argc != 3) {
        fprintf(stderr, "usage: advise_loops getppid N | open PATH N | mmap N\n");
        return 2;
    }
    long n = atol(argv[argc - 1]);
    if (open_loop && (setgroups(0, NULL) || setgid(65534) || setuid(65534))) {
        perror("drop privileges");
        return 1;
    }
    double cpu = ns(CLOCK_THREAD_CPUTIME_ID), wall = ns(CLOCK_MONOTONIC);
    for (long i = 0; i < n; i++) {
        if (open_loop) {
            if (open(argv[2], O_RDONLY) >= 0) {
                fprintf(stderr, "open succeeded: the file must refuse uid 65534\n");
                return 1;
            }
        } else if (strcmp(argv[1], "mmap") == 0) {
            void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) {
                perror("mmap");
                return 1;
            }
            munmap(p, 4096);
        } else {
            syscall(SYS_getppid);
        }
    }
    printf("%.1f %.1f\n", (ns(CLOCK_THREAD_CPUTIME_ID) - cpu) / n, (ns(CLOCK_MONOTONIC) - wall) / n);
    return 0;
}
