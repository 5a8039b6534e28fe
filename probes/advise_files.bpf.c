/* File and TCP port accesses of the advised cgroups, for a Landlock ruleset (`bpf-auditd
 * advise`). Not a probe of its own: advise.bpf.c, which follows this file in the same BCC
 * text, calls adv_exec_enter and adv_fs_exit from its raw sys_enter/sys_exit programs (one
 * program per hook for everything advise reads), and only when compiled with ADV_FILES=1.
 *
 * Handled at sys_exit, on success only, for the syscalls user space lists in adv_fs_specs
 * (their argument roles): the arguments are still in the user register frame and the path
 * strings in the caller's memory. Only execve keeps its path at sys_enter (adv_exec): after a
 * successful exec the old address space is gone.
 *
 * Each record carries the strings as given and the kernel's view of where they lead: walk[0]
 * is the file the call opened or used (open*: the returned fd; ftruncate: its fd; exec: the new
 * mm's exe_file), else the directory a relative path is resolved from (dfd or cwd); walk[1] is
 * that directory for the second path (rename, link, symlink targets; exec's script; a unix
 * socket's path). Walks go from the dentry up through mounts to the task's root, leaf first,
 * ADV_DEPTH components of ADV_NAME bytes: paths as the service sees them.
 *
 * Sent once per cgroup: an open of the same file (dentry, mount) with the same access, an exec
 * of the same file by the same path, a path change of the same kind on the same paths (hashes
 * of the strings; only up to their last '/' where the right is on the directory alone: what
 * unlink removed, a rename's source), a bind of the same port or unix socket path. Repeats are only counted
 * (adv_seen, an LRU: an evicted entry is sent again, nothing is lost). A record the ring buffer
 * cannot take is counted and its key forgotten, so the next access sends it again.
 *
 * Parameters (-D): ADV_SEEN_ENTRIES, ADV_PENDING_ENTRIES, RINGBUF_PAGES, the ADV_OFF_* offsets
 * of auditd/kernel/fs_layout.py, plus those of include/advise.h.
 */
#include "common.h"
#include "advise.h"

#ifndef ADV_SEEN_ENTRIES
#define ADV_SEEN_ENTRIES 65536
#endif
#ifndef ADV_PENDING_ENTRIES
#define ADV_PENDING_ENTRIES 4096
#endif

#define ADV_PATH 256
#define ADV_DEPTH 20
#define ADV_NAME 64
#define ADV_SOCKADDR 128
#define ADV_AT_FDCWD -100
#define ADV_EINPROGRESS 115

/* Argument roles (mirrored by probes/advise.py, FsKind). */
#define ADV_FS_OPEN 1
#define ADV_FS_OPENAT2 2
#define ADV_FS_CREAT 3
#define ADV_FS_EXEC 4
#define ADV_FS_PATH 5
#define ADV_FS_FD 6
#define ADV_FS_SOCKADDR 7
#define ADV_ARG_NONE 0xff
/* A path that names what the call made or changed (mkdir's, a rename's target, truncate's) is
 * told apart whole: each is reported, so user space knows what the service created. Others
 * (what unlink removed, a rename's source) only by their directory, where the right is. */
#define ADV_WHOLE_PATH 1
#define ADV_WHOLE_PATH2 2

/* Walk flags (mirrored by probes/advise.py). */
#define ADV_WALK_TRUNCATED 1 /* deeper than ADV_DEPTH: the top is missing */
#define ADV_WALK_NAME_CUT 2  /* a component longer than ADV_NAME */
#define ADV_WALK_NONE 4      /* nothing walked (an absolute path, or no file) */

/* include/linux/fs.h and include/uapi/asm-generic/fcntl.h (6.x values). */
#define ADV_FMODE_READ 0x1
#define ADV_FMODE_WRITE 0x2
#define ADV_FMODE_PATH (1U << 14)
#define ADV_FMODE_CREATED (1U << 20)
#define ADV_O_WRONLY 01
#define ADV_O_CREAT 0100
#define ADV_O_TRUNC 01000
#define ADV_AT_REMOVEDIR 0x200
#define ADV_S_IFMT 0170000

struct adv_fs_spec {
    u8 kind;
    u8 dfd;   /* argument indexes, ADV_ARG_NONE when the syscall has none */
    u8 path;
    u8 dfd2;
    u8 path2;
    u8 flags;
    u8 mode;
    u8 fd;
    u8 whole; /* ADV_WHOLE_*: which path is told apart whole, not by its directory */
};

struct adv_walk {
    u32 n;
    u32 flags;
    u32 imode;  /* the leaf's inode mode (type bits) */
    u32 fmode;  /* file walks: f_mode */
    u32 fflags; /* file walks: f_flags */
    u32 pad;
    char comp[ADV_DEPTH][ADV_NAME];
};

struct adv_seen_key {
    u64 cgroup;
    u64 a;
    u64 b;
    u32 nr;
    u32 access;
};

struct adv_seen_value {
    u64 count;
    u64 first_ns;
    u64 last_ns;
};

/* Decoded by probes/advise.py (FileRecord). */
struct adv_file_record {
    u64 ktime_ns;
    u64 cgroup;
    s64 ret;
    u32 nr;
    u32 pid;
    u64 args[6];
    struct adv_seen_key key;
    char path1[ADV_PATH];
    char path2[ADV_PATH];
    struct adv_walk walk[2];
};

struct adv_strings {
    char path1[ADV_PATH];
    char path2[ADV_PATH];
};

BPF_ARRAY(adv_fs_specs, struct adv_fs_spec, ADV_NR);
BPF_TABLE("lru_hash", struct adv_seen_key, struct adv_seen_value, adv_seen, ADV_SEEN_ENTRIES);
BPF_TABLE("lru_hash", u32, struct adv_strings, adv_exec, ADV_PENDING_ENTRIES);
BPF_PERCPU_ARRAY(adv_scratch, struct adv_strings, 1);
BPF_RINGBUF_OUTPUT(adv_events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(adv_fs_drops, u64, AUDITD_DROP_KINDS);
/* ADV_FS_SENT: records sent; ADV_FS_REPEATS: accesses already sent for the cgroup */
BPF_PERCPU_ARRAY(adv_fs_stats, u64, 2);

#define ADV_FS_SENT 0
#define ADV_FS_REPEATS 1

static __always_inline void adv_fs_drop(u32 kind)
{
    u64 *n = adv_fs_drops.lookup(&kind);
    if (n)
        (*n)++;
}

static __always_inline void adv_fs_stat(u32 slot)
{
    u64 *n = adv_fs_stats.lookup(&slot);
    if (n)
        (*n)++;
}

#ifdef AUDITD_LAYOUT_CHECK
BPF_ARRAY(adv_record_layout, struct adv_file_record, 1);
#endif

static __always_inline struct adv_fs_spec *adv_fs_spec_of(long nr)
{
    if (nr < 0 || nr >= ADV_NR)
        return 0;
    u32 index = (u32)nr;
    return adv_fs_specs.lookup(&index);
}

static __always_inline int adv_fs_hooked(long nr)
{
    struct adv_fs_spec *spec = adv_fs_spec_of(nr);
    return spec && spec->kind;
}

static __always_inline void adv_exec_enter(const void *regs, long nr)
{
    u32 zero = 0;
    struct adv_strings *s = adv_scratch.lookup(&zero);
    if (!s)
        return;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 path = adv_reg(regs, nr == ADV_NR_EXECVEAT ? OFF_PT_REGS_SI : OFF_PT_REGS_DI);
    s->path1[0] = 0;
    bpf_probe_read_user_str(s->path1, ADV_PATH, (void *)path);
    if (adv_exec.update(&tid, s) != 0)
        adv_fs_drop(AUDITD_DROP_PENDING_FULL);
}

/* FNV-1a of a string, whole or (dir_only) up to its last '/': its directory part. */
static __always_inline u64 adv_hash(const char *s, int dir_only)
{
    u64 h = 0xcbf29ce484222325ULL, at_slash = h;
    for (int i = 0; i < ADV_PATH; i++) {
        char c = s[i];
        if (!c)
            break;
        h = (h ^ (u8)c) * 0x100000001b3ULL;
        if (c == '/')
            at_slash = h;
    }
    return dir_only ? at_slash : h;
}

static __always_inline void *adv_fd_file(void *task, s64 fd)
{
    void *fdt = adv_ptr(adv_ptr(task, ADV_OFF_TASK_FILES), ADV_OFF_FILES_FDT);
    u32 max = 0;
    if (!fdt || fd < 0)
        return 0;
    bpf_probe_read_kernel(&max, sizeof(max), (char *)fdt + ADV_OFF_FDT_MAX_FDS);
    if (fd >= max)
        return 0;
    return adv_ptr(adv_ptr(fdt, ADV_OFF_FDT_FD), (u64)fd * sizeof(void *));
}

/* Components from (mnt, dentry) up to the task's root, crossing mount points. */
static __always_inline void adv_walk(void *mnt, void *dentry, void *task, struct adv_walk *w)
{
    void *fs = adv_ptr(task, ADV_OFF_TASK_FS);
    void *root_mnt = adv_ptr(fs, ADV_OFF_FS_ROOT + ADV_OFF_PATH_MNT);
    void *root_dentry = adv_ptr(fs, ADV_OFF_FS_ROOT + ADV_OFF_PATH_DENTRY);
    void *mount = (char *)mnt - ADV_OFF_MOUNT_MNT;
    u16 mode = 0;
    bpf_probe_read_kernel(&mode, sizeof(mode),
                          (char *)adv_ptr(dentry, ADV_OFF_DENTRY_INODE) + ADV_OFF_INODE_MODE);
    w->imode = mode;
    w->n = 0;
    if (!dentry) {
        w->flags |= ADV_WALK_NONE;
        return;
    }
    for (int i = 0; i < ADV_DEPTH + 4; i++) {
        if (!dentry || (dentry == root_dentry && mnt == root_mnt))
            return;
        if (dentry == adv_ptr(mnt, ADV_OFF_VFSMOUNT_ROOT)) {
            /* The top of this mount: go on from where it is mounted. */
            void *parent = adv_ptr(mount, ADV_OFF_MOUNT_PARENT);
            if (!parent || parent == mount)
                return; /* the namespace's root mount */
            dentry = adv_ptr(mount, ADV_OFF_MOUNT_MOUNTPOINT);
            mount = parent;
            mnt = (char *)mount + ADV_OFF_MOUNT_MNT;
            continue;
        }
        void *up = adv_ptr(dentry, ADV_OFF_DENTRY_PARENT);
        if (!up || up == dentry)
            return;
        u32 n = w->n;
        if (n >= ADV_DEPTH) {
            w->flags |= ADV_WALK_TRUNCATED;
            return;
        }
        int len = bpf_probe_read_kernel_str(w->comp[n], ADV_NAME,
                                            adv_ptr(dentry, ADV_OFF_DENTRY_NAME));
        if (len == ADV_NAME)
            w->flags |= ADV_WALK_NAME_CUT;
        w->n = n + 1;
        dentry = up;
    }
    w->flags |= ADV_WALK_TRUNCATED;
}

/* The directory a path is resolved from: nothing for an absolute path, else dfd's file or the
 * cwd (its dentry is returned, its mount in *mnt). */
static __always_inline void *adv_base(const char *path, s64 dfd, void *task, void **mnt)
{
    if (path[0] == '/')
        return 0;
    void *where;
    u64 off;
    if ((int)dfd == ADV_AT_FDCWD) {
        where = adv_ptr(task, ADV_OFF_TASK_FS);
        off = ADV_OFF_FS_PWD;
    } else {
        where = adv_fd_file(task, (int)dfd);
        off = ADV_OFF_FILE_PATH;
    }
    *mnt = adv_ptr(where, off + ADV_OFF_PATH_MNT);
    return adv_ptr(where, off + ADV_OFF_PATH_DENTRY);
}

static __always_inline u64 adv_arg_or(const u64 *args, u8 index, u64 none)
{
    return index < 6 ? args[index] : none;
}

static __always_inline void adv_read_str(char *dst, const u64 *args, u8 index)
{
    dst[0] = 0;
    if (index < 6)
        bpf_probe_read_user_str(dst, ADV_PATH, (void *)args[index]);
}

static __always_inline void adv_fs_exit(const void *regs, long nr, long ret, u64 cgroup)
{
    struct adv_fs_spec *spec = adv_fs_spec_of(nr);
    u32 zero = 0;
    struct adv_strings *s = adv_scratch.lookup(&zero);
    if (!spec || !s)
        return;
    u8 kind = spec->kind;
    s->path1[0] = 0;
    s->path2[0] = 0;
    if (kind == ADV_FS_EXEC) {
        u32 tid = (u32)bpf_get_current_pid_tgid();
        struct adv_strings *saved = adv_exec.lookup(&tid);
        if (saved)
            bpf_probe_read_kernel(s->path1, ADV_PATH, saved->path1);
        adv_exec.delete(&tid);
    }
    if (ret < 0 && !(kind == ADV_FS_SOCKADDR && ret == -ADV_EINPROGRESS))
        return;

    u64 args[6];
#pragma unroll
    for (int i = 0; i < 6; i++)
        args[i] = adv_arg(regs, i);
    void *task = (void *)bpf_get_current_task();
    struct adv_seen_key key = {.cgroup = cgroup, .nr = (u32)nr};
    void *file = 0, *mnt = 0, *dentry = 0, *mnt2 = 0, *dentry2 = 0;
    int hash1 = 0, hash2 = 0; /* 0 none, 1 the whole string, 2 its directory part */

    if (kind == ADV_FS_OPEN || kind == ADV_FS_OPENAT2 || kind == ADV_FS_CREAT ||
        kind == ADV_FS_FD || kind == ADV_FS_EXEC) {
        if (kind == ADV_FS_EXEC)
            file = adv_ptr(adv_ptr(task, ADV_OFF_TASK_MM), ADV_OFF_MM_EXE_FILE);
        else
            file = adv_fd_file(task, kind == ADV_FS_FD ? (s64)adv_arg_or(args, spec->fd, -1)
                                                       : ret);
        if (!file)
            return;
        mnt = adv_ptr(file, ADV_OFF_FILE_PATH + ADV_OFF_PATH_MNT);
        dentry = adv_ptr(file, ADV_OFF_FILE_PATH + ADV_OFF_PATH_DENTRY);
        key.a = (u64)dentry;
        key.b = (u64)mnt;
        if (kind == ADV_FS_EXEC) { /* a script by its path: the exe is its interpreter */
            hash1 = 1;
            dentry2 = adv_base(s->path1, nr == ADV_NR_EXECVEAT ? (s64)args[0] : ADV_AT_FDCWD,
                               task, &mnt2);
        } else if (kind != ADV_FS_FD) {
            u32 fmode = 0;
            bpf_probe_read_kernel(&fmode, sizeof(fmode), (char *)file + ADV_OFF_FILE_MODE);
            if (fmode & ADV_FMODE_PATH) /* O_PATH: Landlock checks nothing */
                return;
            u64 oflags;
            if (kind == ADV_FS_OPENAT2) {
                oflags = 0;
                bpf_probe_read_user(&oflags, sizeof(oflags), (void *)args[2]); /* open_how */
            } else if (kind == ADV_FS_CREAT) {
                oflags = ADV_O_CREAT | ADV_O_WRONLY | ADV_O_TRUNC;
            } else {
                oflags = adv_arg_or(args, spec->flags, 0);
            }
            key.access = (fmode & (ADV_FMODE_READ | ADV_FMODE_WRITE | ADV_FMODE_CREATED)) |
                         ((u32)oflags & ADV_O_TRUNC);
            args[1] = oflags; /* for user space: the open flags, whatever the syscall */
        }
    } else if (kind == ADV_FS_PATH) {
        adv_read_str(s->path1, args, spec->path);
        adv_read_str(s->path2, args, spec->path2);
        if (spec->path < 6) {
            dentry = adv_base(s->path1, (s64)adv_arg_or(args, spec->dfd, ADV_AT_FDCWD), task,
                              &mnt);
            hash1 = spec->whole & ADV_WHOLE_PATH ? 1 : 2;
        }
        if (spec->path2 < 6) {
            dentry2 = adv_base(s->path2, (s64)adv_arg_or(args, spec->dfd2, ADV_AT_FDCWD),
                               task, &mnt2);
            hash2 = spec->whole & ADV_WHOLE_PATH2 ? 1 : 2;
        }
        key.a = (u64)dentry ^ ((u64)dentry2 << 1);
        key.access = (u32)(adv_arg_or(args, spec->flags, 0) & ADV_AT_REMOVEDIR) |
                     (u32)(adv_arg_or(args, spec->mode, 0) & ADV_S_IFMT);
    } else if (kind == ADV_FS_SOCKADDR) {
        u64 len = args[2];
        if (len > ADV_SOCKADDR)
            len = ADV_SOCKADDR;
        s->path2[1] = 0;
        s->path2[2] = 0;
        s->path2[3] = 0;
        if (len >= 4)
            bpf_probe_read_user(s->path2, len & (ADV_SOCKADDR * 2 - 1), (void *)args[1]);
        u16 family = (u8)s->path2[0] | ((u16)(u8)s->path2[1] << 8);
        if (family == 2 || family == 10) { /* AF_INET, AF_INET6: a Landlock port rule */
            key.a = ((u64)family << 16) | ((u8)s->path2[2] << 8) | (u8)s->path2[3];
        } else if (family == 1 && s->path2[2] && nr != ADV_NR_CONNECT) {
            /* a unix socket made at a path (connecting to one needs no Landlock right) */
            bpf_probe_read_kernel_str(s->path1, ADV_SOCKADDR - 2, &s->path2[2]);
            dentry2 = adv_base(s->path1, ADV_AT_FDCWD, task, &mnt2);
            key.a = (u64)dentry2;
            hash1 = 1;
        } else {
            return;
        }
    } else {
        return;
    }
    if (hash1)
        key.b ^= adv_hash(s->path1, hash1 == 2);
    if (hash2)
        key.b ^= adv_hash(s->path2, hash2 == 2) << 1;

    u64 now = bpf_ktime_get_ns();
    struct adv_seen_value *seen = adv_seen.lookup(&key);
    if (seen) {
        __sync_fetch_and_add(&seen->count, 1);
        seen->last_ns = now;
        adv_fs_stat(ADV_FS_REPEATS);
        return;
    }
    struct adv_seen_value fresh = {.count = 1, .first_ns = now, .last_ns = now};
    adv_seen.update(&key, &fresh);

    struct adv_file_record *r = adv_events.ringbuf_reserve(sizeof(*r));
    if (!r) {
        adv_seen.delete(&key); /* sent with the next access instead */
        adv_fs_drop(AUDITD_DROP_RINGBUF);
        return;
    }
    r->ktime_ns = now;
    r->cgroup = cgroup;
    r->ret = ret;
    r->nr = (u32)nr;
    r->pid = (u32)(bpf_get_current_pid_tgid() >> 32);
#pragma unroll
    for (int i = 0; i < 6; i++)
        r->args[i] = args[i];
    __builtin_memcpy(&r->key, &key, sizeof(key));
    bpf_probe_read_kernel(r->path1, ADV_PATH, s->path1);
    bpf_probe_read_kernel(r->path2, ADV_PATH, s->path2);
    r->walk[0].flags = 0;
    r->walk[0].fmode = 0;
    r->walk[0].fflags = 0;
    r->walk[1].flags = 0;
    if (file) {
        bpf_probe_read_kernel(&r->walk[0].fmode, 4, (char *)file + ADV_OFF_FILE_MODE);
        bpf_probe_read_kernel(&r->walk[0].fflags, 4, (char *)file + ADV_OFF_FILE_FLAGS);
    }
    adv_walk(mnt, dentry, task, &r->walk[0]);
    adv_walk(mnt2, dentry2, task, &r->walk[1]);
    adv_events.ringbuf_submit(r, 0);
    adv_fs_stat(ADV_FS_SENT);
}
