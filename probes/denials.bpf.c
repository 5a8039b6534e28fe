/* Denials: syscalls the kernel refused with EACCES or EPERM.
 *
 * Every refusal is counted exactly in denial_counts (per cgroup, syscall, errno, source), so a
 * flood is counted even when its records cannot all be sent. Records go through denial_events;
 * one that does not fit is counted in denial_drops, never lost silently.
 *
 * Parameters (-D): DENIAL_COUNTER_ENTRIES, TARGET_LEN, plus those of common.h.
 */
#include "common.h"

#ifndef DENIAL_COUNTER_ENTRIES
#define DENIAL_COUNTER_ENTRIES 16384
#endif
#ifndef TARGET_LEN
#define TARGET_LEN 256
#endif

#define DENIAL_SOURCE_SYSCALL 0

#define DENIAL_FLAG_TARGET_TRUNCATED 1
#define DENIAL_FLAG_TARGET_UNREADABLE 2

struct denial_key {
    u64 cgroup_id;
    u32 syscall;
    u32 err;
    u32 source;
    u32 _pad;
};

/* Decoded by probes/denials.py (DenialRecord); tests/test_probes_layout.py keeps them in step. */
struct denial_record {
    u64 ktime_ns;
    u64 cgroup_id;
    u32 pid;
    u32 tid;
    u32 uid;
    u32 gid;
    u32 syscall;
    u32 err;
    u32 source;
    u32 flags;
    char comm[16];
    char target[TARGET_LEN];
};

BPF_PERCPU_HASH(denial_counts, struct denial_key, u64, DENIAL_COUNTER_ENTRIES);
/* Refusals whose key did not fit in denial_counts, per syscall-agnostic slot: totals stay exact. */
BPF_PERCPU_ARRAY(denial_overflow, u64, 1);
BPF_PERCPU_ARRAY(denial_drops, u64, AUDITD_DROP_KINDS);
BPF_RINGBUF_OUTPUT(denial_events, RINGBUF_PAGES);

#ifdef AUDITD_LAYOUT_CHECK
/* Only in the layout test: lets BCC describe the record so Python can compare offsets. */
BPF_ARRAY(denial_record_layout, struct denial_record, 1);
#endif

static __always_inline void denial_drop(u32 kind)
{
    u64 *n = denial_drops.lookup(&kind);
    if (n)
        (*n)++;
}

static __always_inline void denial_count(struct denial_key *key)
{
    u64 *n = denial_counts.lookup(key);
    if (n) {
        (*n)++;
        return;
    }
    u64 one = 1;
    if (denial_counts.insert(key, &one) == 0)
        return;
    /* Another CPU may have inserted the key first; otherwise the map is full. */
    n = denial_counts.lookup(key);
    if (n) {
        (*n)++;
        return;
    }
    u32 zero = 0;
    u64 *overflow = denial_overflow.lookup(&zero);
    if (overflow)
        (*overflow)++;
    denial_drop(AUDITD_DROP_COUNTER_FULL);
}

static __always_inline void denial_emit(u32 syscall, long ret, u64 user_path)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u64 uid_gid = bpf_get_current_uid_gid();
    struct denial_key key = {
        .cgroup_id = bpf_get_current_cgroup_id(),
        .syscall = syscall,
        .err = (u32)-ret,
        .source = DENIAL_SOURCE_SYSCALL,
    };
    denial_count(&key);

    struct denial_record *r = denial_events.ringbuf_reserve(sizeof(*r));
    if (!r) {
        denial_drop(AUDITD_DROP_RINGBUF);
        return;
    }
    r->ktime_ns = bpf_ktime_get_ns();
    r->cgroup_id = key.cgroup_id;
    r->pid = pid_tgid >> 32;
    r->tid = (u32)pid_tgid;
    r->uid = (u32)uid_gid;
    r->gid = uid_gid >> 32;
    r->syscall = syscall;
    r->err = key.err;
    r->source = DENIAL_SOURCE_SYSCALL;
    r->flags = 0;
    bpf_get_current_comm(r->comm, sizeof(r->comm));
    r->target[0] = 0;
    if (user_path) {
        long n = bpf_probe_read_user_str(r->target, sizeof(r->target), (void *)user_path);
        if (n < 0)
            r->flags |= DENIAL_FLAG_TARGET_UNREADABLE;
        else if (n == sizeof(r->target))
            r->flags |= DENIAL_FLAG_TARGET_TRUNCATED;
    }
    denial_events.ringbuf_submit(r, 0);
}

/* x86_64 syscall numbers, the key the decoder names them by. */
#define DENIAL_NR_OPENAT 257

#if AUDITD_HAVE_TASK_PT_REGS

TRACEPOINT_PROBE(syscalls, sys_exit_openat)
{
    if (!auditd_is_refusal(args->ret))
        return 0;
    denial_emit(DENIAL_NR_OPENAT, args->ret, auditd_syscall_arg(1));
    return 0;
}

#else /* no BTF task: keep the path pointer from entry, per thread */

BPF_HASH(denial_pending, u32, u64, 10240);

TRACEPOINT_PROBE(syscalls, sys_enter_openat)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 path = (u64)args->filename;
    if (denial_pending.update(&tid, &path) != 0)
        denial_drop(AUDITD_DROP_PENDING_FULL);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 *path = denial_pending.lookup(&tid);
    u64 user_path = path ? *path : 0;
    if (path)
        denial_pending.delete(&tid);
    if (!auditd_is_refusal(args->ret))
        return 0;
    denial_emit(DENIAL_NR_OPENAT, args->ret, user_path);
    return 0;
}

#endif
