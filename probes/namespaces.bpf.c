/* Namespace changes: setns, unshare, clone and clone3 calls that create or join namespaces.
 *
 * At sys_enter the thread's namespace inodes are kept in ns_pending (per tid); at sys_exit
 * they are read again and both sets go out in one record with the result. clone/clone3 are
 * kept only when their flags ask for a new namespace; the child's pid and namespaces come from
 * sched_process_fork (parent and child task pointers), which fires between the two.
 *
 * For pid and time the inodes are those of the *children's* namespaces (pid_for_children,
 * time_for_children): that is what setns and unshare change for the caller.
 *
 * Every call is counted exactly in ns_counts (cgroup, op, types, errno, escaped types), so a
 * flood is counted even when its records cannot all be sent; a record that does not fit the
 * ring buffer is counted in ns_drops.
 *
 * Dedup, as the denial probe does: a record is sent only for a combination not seen within
 * NS_WINDOW_NS, the combination being the program (cgroup, uid, comm: not the pid, since a
 * flood is typically thousands of short-lived children making one call each), op, types,
 * result, escaped types, the types whose namespace before the call was the host's, and the
 * setns target. Repeats are counted in the window entry (ns_recent, an LRU) and reported with
 * the next record of the combination (its running count, `seen`) or in a summary user space
 * writes when the flood stops. An escape, a first move out of the host's namespaces or a new
 * setns target is never hidden by a flood of other calls: each is a combination of its own.
 *
 * Escape: a type whose namespace was not PID 1's before the call and is PID 1's after it.
 * PID 1's namespaces are read from its task (found by walking real_parent) into ns_host_table
 * at unshare's entry, so they need no /proc access; user space may write them too.
 *
 * The functions are attached by name (ProbeSpec.tracepoints), not as TRACEPOINT_PROBE: the
 * denial probe hooks the same syscall tracepoints in the same BCC object, and BCC generates one
 * argument struct per tracepoint. The records of syscall tracepoints are therefore declared
 * here; tests/test_namespaces_probe.py checks them against tracefs.
 *
 * Parameters (-D): NS_COUNTER_ENTRIES, NS_PENDING_ENTRIES, NS_RECENT_ENTRIES, NS_WINDOW_NS, plus
 * those of common.h and task.h (AUDITD_HAVE_FILE_READS for the setns target's inode).
 */
#include "common.h"
#include "task.h"

#ifndef NS_COUNTER_ENTRIES
#define NS_COUNTER_ENTRIES 4096
#endif
#ifndef NS_PENDING_ENTRIES
#define NS_PENDING_ENTRIES 10240
#endif
#ifndef NS_RECENT_ENTRIES
#define NS_RECENT_ENTRIES 16384
#endif
#ifndef NS_WINDOW_NS
#define NS_WINDOW_NS 10000000000ULL
#endif
#ifndef AUDITD_HAVE_FILE_READS
#define AUDITD_HAVE_FILE_READS 0
#endif

/* Mirrored by auditd.signals.namespaces.event.NamespaceOp (tests/test_namespaces.py reads these numbers). */
#define NS_OP_SETNS 0
#define NS_OP_UNSHARE 1
#define NS_OP_CLONE 2
#define NS_OP_CLONE3 3

/* include/uapi/linux/sched.h */
#define NS_CLONE_NEWTIME 0x00000080ULL
#define NS_CLONE_NEWNS 0x00020000ULL
#define NS_CLONE_NEWCGROUP 0x02000000ULL
#define NS_CLONE_NEWUTS 0x04000000ULL
#define NS_CLONE_NEWIPC 0x08000000ULL
#define NS_CLONE_NEWUSER 0x10000000ULL
#define NS_CLONE_NEWPID 0x20000000ULL
#define NS_CLONE_NEWNET 0x40000000ULL
/* clone(2) keeps the exit signal in the low byte, where CLONE_NEWTIME sits for the others. */
#define NS_CSIGNAL 0xffULL

#define NS_FLAG_FLAGS_UNREADABLE 1 /* clone3: struct clone_args unreadable at entry and exit */
#define NS_FLAG_CHILD 2            /* child_pid and after[] describe the new task */
#define NS_FLAG_HOST_UNKNOWN 4     /* PID 1's namespaces unknown: escapes not checked */

/* Where clone3's struct clone_args could not be read (ns_faults index). */
#define NS_FAULT_ENTRY 0
#define NS_FAULT_EXIT 1

/* Deeper process trees than this are not walked to find PID 1 (the next call tries again). */
#define NS_MAX_DEPTH 64

/* struct syscall_trace_enter / syscall_trace_exit as tracefs describes them. */
struct ns_sys_enter_args {
    u64 __common;
    s32 nr;
    u32 __pad;
    u64 args[6];
};

struct ns_sys_exit_args {
    u64 __common;
    s32 nr;
    u32 __pad;
    s64 ret;
};

struct ns_pending {
    u64 start_ns;
    u64 flags;        /* the call's flags (setns: nstype) */
    u64 uargs;        /* clone3: user pointer to struct clone_args, to retry a failed read */
    u64 target_ino;   /* setns: inode of the file behind fd (0 unknown) */
    u64 target_magic; /* its filesystem's magic (nsfs for a namespace file, pidfs for a pidfd) */
    u32 op;
    s32 fd;
    u32 rflags;
    u32 child_pid;
    u32 before[AUDITD_NS_COUNT];
    u32 child[AUDITD_NS_COUNT];
};

/* Decoded by probes/namespaces.py (NamespaceRecord); the layout test keeps them in step. */
struct ns_record {
    u64 ktime_ns;
    u64 cgroup_id;
    u64 flags;
    u64 target_ino;
    u64 target_magic;
    u64 seen; /* calls of this combination so far, this one included (its ns_recent entry) */
    u32 pid;
    u32 tid;
    u32 uid;
    u32 op;
    u32 err;       /* 0 on success, else the positive errno */
    u32 child_pid; /* clone/clone3: the new task's pid as the initial pid namespace sees it */
    u32 types;     /* bit per enum auditd_ns_type: the types the call asked for or changed */
    u32 escaped;   /* bit per type: moved from a namespace not PID 1's into PID 1's */
    u32 rflags;
    s32 fd;
    u32 from_host; /* bit per type of `types`: its namespace before the call was the host's */
    u32 before[AUDITD_NS_COUNT];
    u32 after[AUDITD_NS_COUNT];
    char comm[16];
};

/* One combination inside the dedup window (see the header). */
struct ns_recent_key {
    u64 cgroup_id;
    u64 target_ino;
    u32 uid;
    u32 op;
    u32 types;
    u32 err;
    u32 escaped;
    u32 from_host;
    char comm[16];
};

struct ns_recent {
    u64 last_sent_ns;
    u64 seen; /* every call of this combination, sent or not (monotonic) */
};

struct ns_key {
    u64 cgroup_id;
    u32 op;
    u32 types;
    u32 err;
    u32 escaped;
};

struct ns_host {
    u32 known;
    u32 inum[AUDITD_NS_COUNT];
};

BPF_HASH(ns_pending, u32, struct ns_pending, NS_PENDING_ENTRIES);
BPF_PERCPU_HASH(ns_counts, struct ns_key, u64, NS_COUNTER_ENTRIES);
/* Calls whose key did not fit in ns_counts: totals stay exact. */
BPF_PERCPU_ARRAY(ns_overflow, u64, 1);
BPF_PERCPU_ARRAY(ns_drops, u64, AUDITD_DROP_KINDS);
BPF_PERCPU_ARRAY(ns_faults, u64, 2);
BPF_ARRAY(ns_host_table, struct ns_host, 1);
BPF_TABLE("lru_hash", struct ns_recent_key, struct ns_recent, ns_recent, NS_RECENT_ENTRIES);
BPF_RINGBUF_OUTPUT(ns_events, RINGBUF_PAGES);

#ifdef AUDITD_LAYOUT_CHECK
BPF_ARRAY(ns_record_layout, struct ns_record, 1);
BPF_ARRAY(ns_recent_layout, struct ns_recent, 1);
#endif

static __always_inline void ns_drop(u32 kind)
{
    u64 *n = ns_drops.lookup(&kind);
    if (n)
        (*n)++;
}

static __always_inline void ns_fault(u32 where)
{
    u64 *n = ns_faults.lookup(&where);
    if (n)
        (*n)++;
}

static __always_inline u32 ns_types_of(u64 flags)
{
    u32 types = 0;
    if (flags & NS_CLONE_NEWNS)
        types |= 1 << AUDITD_NS_MNT;
    if (flags & NS_CLONE_NEWPID)
        types |= 1 << AUDITD_NS_PID;
    if (flags & NS_CLONE_NEWNET)
        types |= 1 << AUDITD_NS_NET;
    if (flags & NS_CLONE_NEWUTS)
        types |= 1 << AUDITD_NS_UTS;
    if (flags & NS_CLONE_NEWIPC)
        types |= 1 << AUDITD_NS_IPC;
    if (flags & NS_CLONE_NEWUSER)
        types |= 1 << AUDITD_NS_USER;
    if (flags & NS_CLONE_NEWCGROUP)
        types |= 1 << AUDITD_NS_CGROUP;
    if (flags & NS_CLONE_NEWTIME)
        types |= 1 << AUDITD_NS_TIME;
    return types;
}

/* The inode of each of the task's namespaces (enum auditd_ns_type order), the children's for
 * pid and time; 0 where unknown. nsproxy is read once: this runs twice per recorded call. */
static __always_inline void ns_read_all(void *task, u32 *out)
{
#if AUDITD_STRUCT_READS
    void *nsproxy = auditd_read_ptr(task, OFF_TASK_NSPROXY);
#ifdef OFF_MNT_NS_INUM
    out[AUDITD_NS_MNT] =
        auditd_read_u32(auditd_read_ptr(nsproxy, OFF_NSPROXY_MNT_NS), OFF_MNT_NS_INUM);
#else
    out[AUDITD_NS_MNT] = 0;
#endif
    out[AUDITD_NS_PID] = auditd_read_u32(
        auditd_read_ptr(nsproxy, OFF_NSPROXY_PID_NS_FOR_CHILDREN), OFF_PID_NS_INUM);
    out[AUDITD_NS_NET] =
        auditd_read_u32(auditd_read_ptr(nsproxy, OFF_NSPROXY_NET_NS), OFF_NET_NS_INUM);
    out[AUDITD_NS_UTS] =
        auditd_read_u32(auditd_read_ptr(nsproxy, OFF_NSPROXY_UTS_NS), OFF_UTS_NS_INUM);
    out[AUDITD_NS_IPC] =
        auditd_read_u32(auditd_read_ptr(nsproxy, OFF_NSPROXY_IPC_NS), OFF_IPC_NS_INUM);
    out[AUDITD_NS_USER] = auditd_task_ns_inum(task, AUDITD_NS_USER);
    out[AUDITD_NS_CGROUP] =
        auditd_read_u32(auditd_read_ptr(nsproxy, OFF_NSPROXY_CGROUP_NS), OFF_CGROUP_NS_INUM);
    out[AUDITD_NS_TIME] = auditd_read_u32(
        auditd_read_ptr(nsproxy, OFF_NSPROXY_TIME_NS_FOR_CHILDREN), OFF_TIME_NS_INUM);
#else
#pragma unroll
    for (int t = 0; t < AUDITD_NS_COUNT; t++)
        out[t] = 0;
#endif
}

/* A task of PID 1, found by walking real_parent from the current task (every user task
 * descends from it; real_parent is the thread that forked, so compare thread groups); 0 from a
 * kernel thread or a tree deeper than NS_MAX_DEPTH. */
static __always_inline void *ns_pid1_task(void)
{
#if AUDITD_STRUCT_READS
    void *task = (void *)bpf_get_current_task();
    for (int i = 0; i < NS_MAX_DEPTH && task; i++) {
        u32 tgid = auditd_read_u32(task, OFF_TASK_TGID);
        if (tgid == 1)
            return task;
        if (tgid == 0) /* the idle task */
            return 0;
        task = auditd_read_ptr(task, OFF_TASK_REAL_PARENT);
    }
#endif
    return 0;
}

/* Read PID 1's namespaces from its task into ns_host_table, unless known. Called from unshare's
 * entry only (walking the tree at every exit would exceed the verifier's budget); the monitor
 * calls unshare(0) once at start-up for that. */
static __always_inline void ns_host_fill(void)
{
    u32 zero = 0;
    struct ns_host *host = ns_host_table.lookup(&zero);
    if (!host || host->known)
        return;
    void *pid1 = ns_pid1_task();
    if (!pid1)
        return;
    struct ns_host found = {.known = 1};
    ns_read_all(pid1, found.inum);
    ns_host_table.update(&zero, &found);
}

#if AUDITD_STRUCT_READS && AUDITD_HAVE_FILE_READS
/* The inode (and its filesystem's magic) of the file behind `fd` in the task's table, read at
 * entry: another thread of the caller could swap the descriptor before the kernel's own lookup.
 * i_ino and s_magic are unsigned long: 8 bytes on the 64-bit kernels this targets. */
static __always_inline void ns_fd_inode(void *task, s32 fd, u64 *ino, u64 *magic)
{
    void *fdt = auditd_read_ptr(auditd_read_ptr(task, OFF_TASK_FILES), OFF_FILES_FDT);
    u32 max_fds = auditd_read_u32(fdt, OFF_FDTABLE_MAX_FDS);
    if (fd < 0 || (u32)fd >= max_fds)
        return;
    void *file = auditd_read_ptr(auditd_read_ptr(fdt, OFF_FDTABLE_FD), (u64)fd * sizeof(void *));
    void *inode = auditd_read_ptr(file, OFF_FILE_INODE);
    if (!inode)
        return;
    bpf_probe_read_kernel(ino, sizeof(*ino), (char *)inode + OFF_INODE_INO);
    void *sb = auditd_read_ptr(inode, OFF_INODE_SB);
    if (sb)
        bpf_probe_read_kernel(magic, sizeof(*magic), (char *)sb + OFF_SB_MAGIC);
}
#endif

static __always_inline int ns_enter(u32 op, u64 flags, s32 fd, u64 uargs, u32 rflags)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    void *task = (void *)bpf_get_current_task();
    struct ns_pending p = {
        .start_ns = bpf_ktime_get_ns(),
        .flags = flags,
        .uargs = uargs,
        .op = op,
        .fd = fd,
        .rflags = rflags,
    };
    ns_read_all(task, p.before);
#if AUDITD_STRUCT_READS && AUDITD_HAVE_FILE_READS
    if (op == NS_OP_SETNS)
        ns_fd_inode(task, fd, &p.target_ino, &p.target_magic);
#endif
    if (ns_pending.update(&tid, &p) != 0)
        ns_drop(AUDITD_DROP_PENDING_FULL);
    return 0;
}

static __always_inline void ns_count(struct ns_key *key)
{
    u64 *n = ns_counts.lookup(key);
    if (n) {
        (*n)++;
        return;
    }
    u64 one = 1;
    if (ns_counts.insert(key, &one) == 0)
        return;
    /* Another CPU may have inserted the key first; otherwise the map is full. */
    n = ns_counts.lookup(key);
    if (n) {
        (*n)++;
        return;
    }
    u32 zero = 0;
    u64 *overflow = ns_overflow.lookup(&zero);
    if (overflow)
        (*overflow)++;
    ns_drop(AUDITD_DROP_COUNTER_FULL);
}

/* Dedup: the combination's running count when a record should be sent, 0 for a repeat inside
 * the window (counted in its entry, reported later). */
static __always_inline u64 ns_should_send(struct ns_recent_key *key, u64 now)
{
    struct ns_recent *seen = ns_recent.lookup(key);
    if (seen) {
        u64 count = __sync_fetch_and_add(&seen->seen, 1) + 1;
        if (now - seen->last_sent_ns < NS_WINDOW_NS)
            return 0;
        seen->last_sent_ns = now;
        return count;
    }
    struct ns_recent fresh = {.last_sent_ns = now, .seen = 1};
    ns_recent.update(key, &fresh);
    return 1;
}

static __always_inline int ns_exit(u32 op, long ret)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct ns_pending *pending = ns_pending.lookup(&tid);
    if (!pending)
        return 0;
    struct ns_pending p;
    __builtin_memcpy(&p, pending, sizeof(p));
    ns_pending.delete(&tid);
    int cloning = op == NS_OP_CLONE || op == NS_OP_CLONE3;
    /* A left-over entry of another call, or the child's own return from clone. */
    if (p.op != op || (cloning && ret == 0))
        return 0;

    u32 rflags = p.rflags;
    if (rflags & NS_FLAG_FLAGS_UNREADABLE) {
        /* The kernel has copied clone_args by now, so the page is usually resident. */
        u64 flags = 0;
        if (p.uargs && bpf_probe_read_user(&flags, sizeof(flags), (void *)p.uargs) == 0) {
            p.flags = flags;
            rflags &= ~NS_FLAG_FLAGS_UNREADABLE; /* counted: ns_faults (entry) */
        } else {
            ns_fault(NS_FAULT_EXIT);
        }
    }
    u32 types = 0;
    if (!(rflags & NS_FLAG_FLAGS_UNREADABLE))
        types = ns_types_of(op == NS_OP_CLONE ? p.flags & ~NS_CSIGNAL : p.flags);

    u32 after[AUDITD_NS_COUNT] = {};
    if (cloning) {
        if (p.rflags & NS_FLAG_CHILD) {
            rflags |= NS_FLAG_CHILD;
#pragma unroll
            for (int t = 0; t < AUDITD_NS_COUNT; t++)
                after[t] = p.child[t];
        }
    } else {
        ns_read_all((void *)bpf_get_current_task(), after);
    }

    u32 zero = 0;
    struct ns_host *host = ns_host_table.lookup(&zero);
    if (!host || !host->known)
        rflags |= NS_FLAG_HOST_UNKNOWN;
    u32 escaped = 0, from_host = 0;
#pragma unroll
    for (int t = 0; t < AUDITD_NS_COUNT; t++) {
        if (after[t] && p.before[t] && after[t] != p.before[t])
            types |= 1 << t;
        if (host && host->known && host->inum[t] && p.before[t] && p.before[t] != host->inum[t] &&
            after[t] == host->inum[t])
            escaped |= 1 << t;
        if (host && host->known && host->inum[t] && p.before[t] == host->inum[t])
            from_host |= 1 << t;
    }
    from_host &= types;
    /* clone3 whose flags stayed unreadable: a clone that made no new namespace is no change. */
    if (cloning && !types)
        return 0;

    u64 pid_tgid = bpf_get_current_pid_tgid();
    struct ns_key key = {
        .cgroup_id = bpf_get_current_cgroup_id(),
        .op = op,
        .types = types,
        .err = ret < 0 ? (u32)-ret : 0,
        .escaped = escaped,
    };
    ns_count(&key);

    struct ns_recent_key recent = {
        .cgroup_id = key.cgroup_id,
        .target_ino = p.target_ino,
        .uid = (u32)bpf_get_current_uid_gid(),
        .op = op,
        .types = types,
        .err = key.err,
        .escaped = escaped,
        .from_host = from_host,
    };
    bpf_get_current_comm(recent.comm, sizeof(recent.comm));
    u64 now = bpf_ktime_get_ns();
    u64 seen = ns_should_send(&recent, now);
    if (!seen)
        return 0; /* a repeat: counted above and in its window entry */

    struct ns_record *r = ns_events.ringbuf_reserve(sizeof(*r));
    if (!r) {
        ns_drop(AUDITD_DROP_RINGBUF);
        return 0;
    }
    r->ktime_ns = now;
    r->seen = seen;
    r->cgroup_id = key.cgroup_id;
    r->flags = p.flags;
    r->target_ino = p.target_ino;
    r->target_magic = p.target_magic;
    r->pid = pid_tgid >> 32;
    r->tid = (u32)pid_tgid;
    r->uid = recent.uid;
    r->op = op;
    r->err = key.err;
    r->child_pid = p.child_pid;
    r->types = types;
    r->escaped = escaped;
    r->rflags = rflags;
    r->fd = p.fd;
    r->from_host = from_host;
#pragma unroll
    for (int t = 0; t < AUDITD_NS_COUNT; t++) {
        r->before[t] = p.before[t];
        r->after[t] = after[t];
    }
    __builtin_memcpy(r->comm, recent.comm, sizeof(r->comm));
    ns_events.ringbuf_submit(r, 0);
    return 0;
}

int ns_enter_setns(struct ns_sys_enter_args *args)
{
    return ns_enter(NS_OP_SETNS, args->args[1], (s32)args->args[0], 0, 0);
}

int ns_enter_unshare(struct ns_sys_enter_args *args)
{
    u64 flags = args->args[0];
    /* unshare(0) is a no-op anyone may call: the monitor calls it at start-up, so PID 1's
     * namespaces are known before the first change. */
    ns_host_fill();
    if (!ns_types_of(flags))
        return 0;
    return ns_enter(NS_OP_UNSHARE, flags, -1, 0, 0);
}

int ns_enter_clone(struct ns_sys_enter_args *args)
{
    u64 flags = args->args[0];
    if (!ns_types_of(flags & ~NS_CSIGNAL))
        return 0;
    return ns_enter(NS_OP_CLONE, flags, -1, 0, 0);
}

int ns_enter_clone3(struct ns_sys_enter_args *args)
{
    u64 uargs = args->args[0];
    u64 flags = 0;
    /* struct clone_args starts with its u64 flags. The read cannot fault a page in: keep the
     * call then, and decide at exit. */
    if (bpf_probe_read_user(&flags, sizeof(flags), (void *)uargs) != 0) {
        ns_fault(NS_FAULT_ENTRY);
        return ns_enter(NS_OP_CLONE3, 0, -1, uargs, NS_FLAG_FLAGS_UNREADABLE);
    }
    if (!ns_types_of(flags))
        return 0;
    return ns_enter(NS_OP_CLONE3, flags, -1, uargs, 0);
}

int ns_exit_setns(struct ns_sys_exit_args *args) { return ns_exit(NS_OP_SETNS, args->ret); }
int ns_exit_unshare(struct ns_sys_exit_args *args) { return ns_exit(NS_OP_UNSHARE, args->ret); }
int ns_exit_clone(struct ns_sys_exit_args *args) { return ns_exit(NS_OP_CLONE, args->ret); }
int ns_exit_clone3(struct ns_sys_exit_args *args) { return ns_exit(NS_OP_CLONE3, args->ret); }

#if AUDITD_STRUCT_READS
/* sched_process_fork(parent, child) runs in the parent between its clone's entry and exit:
 * the one place that has the child's task, hence its pid and namespaces. */
int ns_on_fork(struct bpf_raw_tracepoint_args *ctx)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct ns_pending *p = ns_pending.lookup(&tid);
    if (!p || (p->op != NS_OP_CLONE && p->op != NS_OP_CLONE3))
        return 0;
    void *child = (void *)ctx->args[1];
    p->child_pid = auditd_read_u32(child, OFF_TASK_PID);
    ns_read_all(child, p->child);
    p->rflags |= NS_FLAG_CHILD;
    return 0;
}
#endif
