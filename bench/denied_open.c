/* Denied-open flood: join a cgroup, drop to uid/gid 65534, then open() a file that uid may not
 * read N times; print the nanoseconds per refused open. The workload of bench/kernel_filter.py.
 * Usage: denied_open CGROUP_PROCS_FILE PATH N */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s CGROUP_PROCS PATH N\n", argv[0]);
        return 2;
    }
    long n = atol(argv[3]);
    FILE *procs = fopen(argv[1], "w");
    if (!procs || fprintf(procs, "%d\n", getpid()) < 0 || fclose(procs) != 0) {
        perror("joining the cgroup");
        return 1;
    }
    if (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0) {
        perror("dropping to 65534");
        return 1;
    }
    struct timespec a, b;
    long refused = 0;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        int fd = open(argv[2], O_RDONLY);
        if (fd >= 0)
            close(fd);
        else if (errno == EACCES)
            refused++;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    if (refused != n) {
        fprintf(stderr, "only %ld of %ld opens were refused\n", refused, n);
        return 1;
    }
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("%.1f\n", ns / n);
    return 0;
}
