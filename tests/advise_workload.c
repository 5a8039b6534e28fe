/* Workloads for tests/test_advise.py, built static so that what they use is their own (no
 * dynamic loader, no shared libraries). Each step that can be refused exits with its own code
 * and names itself on stderr, so a test sees where a confined run stopped.
 *
 *   server CONFIG LOGDIR PORT  read CONFIG, create/append LOGDIR/server.log, bind 127.0.0.1:PORT
 *                              (below 1024: CAP_NET_BIND_SERVICE), unshare a UTS namespace and
 *                              set its hostname (CAP_SYS_ADMIN)
 *   mmap N                     N anonymous writable mappings, touched and unmapped (each makes
 *                              the overcommit check's no-audit CAP_SYS_ADMIN probe)
 *   bind PORT                  bind 127.0.0.1:PORT only (run as a user with it ambient)
 *   files DIR                  path changes under DIR: mkdir, create, rename across directories,
 *                              symlink, truncate, unlink, rmdir, a unix socket
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static int fail(const char *step, int code)
{
    fprintf(stderr, "FAILED at %s: %s\n", step, strerror(errno));
    return code;
}

static int bind_port(int port)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return fail("socket", 30);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {
        .sin_family = AF_INET,
        .sin_port = htons(port),
        .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
    };
    if (bind(s, (struct sockaddr *)&a, sizeof a))
        return fail("bind", 31);
    if (listen(s, 4))
        return fail("listen", 32);
    close(s);
    return 0;
}

static int server(const char *config, const char *logdir, int port)
{
    char buf[256] = {0}, logpath[512];
    int fd = open(config, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail("open-config", 10);
    if (read(fd, buf, sizeof buf - 1) < 0)
        return fail("read-config", 11);
    close(fd);
    snprintf(logpath, sizeof logpath, "%s/server.log", logdir);
    int log = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log < 0)
        return fail("open-log", 20);
    int bound = bind_port(port);
    if (bound)
        return bound;
    if (unshare(CLONE_NEWUTS))
        return fail("unshare", 40);
    if (sethostname("confined", 8))
        return fail("sethostname", 41);
    dprintf(log, "listening on %d as confined (%s)\n", port, buf);
    close(log);
    printf("OK\n");
    return 0;
}

static int mappings(int n)
{
    for (int i = 0; i < n; i++) {
        char *p = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return fail("mmap", 50);
        p[0] = 1;
        munmap(p, 1 << 16);
    }
    printf("OK\n");
    return 0;
}

static int files(const char *dir)
{
    char a[512], b[512], f[512], g[512], link[512];
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    snprintf(f, sizeof f, "%s/a/file", dir);
    snprintf(g, sizeof g, "%s/b/file", dir);
    snprintf(link, sizeof link, "%s/a/link", dir);
    if (mkdir(a, 0755) || mkdir(b, 0755))
        return fail("mkdir", 60);
    int fd = open(f, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, "data\n", 5) != 5)
        return fail("create", 61);
    close(fd);
    if (rename(f, g))
        return fail("rename", 62);
    if (symlink("../b/file", link))
        return fail("symlink", 63);
    if (truncate(g, 1))
        return fail("truncate", 64);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un u = {.sun_family = AF_UNIX};
    if ((size_t)snprintf(u.sun_path, sizeof u.sun_path, "%s/sock", dir) >= sizeof u.sun_path)
        return fail("unix-socket path", 65);
    if (s < 0 || bind(s, (struct sockaddr *)&u, sizeof u))
        return fail("unix-socket", 65);
    close(s);
    if (unlink(link) || unlink(g) || unlink(u.sun_path))
        return fail("unlink", 66);
    if (rmdir(a) || rmdir(b))
        return fail("rmdir", 67);
    printf("OK\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && !strcmp(argv[1], "server"))
        return server(argv[2], argv[3], atoi(argv[4]));
    if (argc == 3 && !strcmp(argv[1], "mmap"))
        return mappings(atoi(argv[2]));
    if (argc == 3 && !strcmp(argv[1], "bind"))
        return bind_port(atoi(argv[2]));
    if (argc == 3 && !strcmp(argv[1], "files"))
        return files(argv[2]);
    fprintf(stderr, "usage: server CONFIG LOGDIR PORT | mmap N | bind PORT | files DIR\n");
    return 2;
}
