/* Denials: every refusal the kernel reports through a tracepoint.
 *
 *  - syscalls refused with EACCES or EPERM, from per-syscall sys_exit tracepoints (only the
 *    hooked syscalls pay anything; the program returns at once unless the result is a refusal),
 *    with the target read from the syscall's own arguments;
 *  - failed capability checks (capability:cap_capable, ret != 0): the cause of the refusal that
 *    follows in the same thread, or a record of their own inside syscalls that are not hooked;
 *  - seccomp: kills (SIGSYS from signal:signal_generate) and, for tasks under a seccomp filter,
 *    errno refusals (seccomp answers before sys_enter fires, so no entry mark means seccomp).
 *
 * Counting is exact and separate from records: denial_counts (per cgroup, syscall, errno,
 * source) and denial_cap_counts (per cgroup, capability) are incremented for every refusal.
 * Records are sent only for (process, syscall, errno, source, target) combinations not seen
 * within the dedup window; repeats are counted in the window entry and reported with the next
 * record or a summary. A record that cannot be sent is counted in denial_drops.
 *
 * The hooked syscalls and where their targets are come from user space (probes/denials.py
 * HOOKS): it attaches denial_exit_hook to each one's sys_exit tracepoint and fills
 * denial_specs; access/faccessat* and stat* are not hooked on purpose (EACCES there answers a
 * question, it refuses nothing, and shells ask constantly).
 *
 * Parameters (-D): DENIAL_COUNTER_ENTRIES, DENIAL_RECENT_ENTRIES, DENIAL_WINDOW_NS, TARGET_LEN,
 * plus those of common.h and task.h.
 */
#include "common.h"
#include "task.h"

/* BCC copies tracepoint field types verbatim into the argument structs it generates; these
 * are only ever pointers here, so incomplete types keep kernel headers out of the program. */
typedef struct siginfo siginfo_t;
typedef struct __user_cap_header_struct *cap_user_header_t;
typedef struct __user_cap_data_struct *cap_user_data_t;

#ifndef DENIAL_COUNTER_ENTRIES
#define DENIAL_COUNTER_ENTRIES 16384
#endif
#ifndef DENIAL_RECENT_ENTRIES
#define DENIAL_RECENT_ENTRIES 16384
#endif
#ifndef DENIAL_WINDOW_NS
#define DENIAL_WINDOW_NS 10000000000ULL
#endif
#ifndef TARGET_LEN
#define TARGET_LEN 256
#endif
#ifndef AUDITD_HAVE_SECCOMP_MODE
#define AUDITD_HAVE_SECCOMP_MODE 0
#endif
/* Telling seccomp errno refusals apart needs the task's seccomp mode and exit-time arguments
 * (so sys_enter is free to serve as the entry mark). */
#define DENIAL_SECCOMP_ERRNO (AUDITD_HAVE_SECCOMP_MODE && AUDITD_HAVE_TASK_PT_REGS)

/* Who said no (mirrors auditd.model.event.Source via auditd/signals/denials/decode.py). */
#define DENIAL_SOURCE_SYSCALL 0
#define DENIAL_SOURCE_CAPABILITY 1
#define DENIAL_SOURCE_SELINUX 3
#define DENIAL_SOURCE_SECCOMP 4

/* What `target` holds. */
#define DENIAL_TARGET_NONE 0
#define DENIAL_TARGET_PATH 1     /* user string */
#define DENIAL_TARGET_PID 2      /* target_int = pid, target_int2 = the second argument */
#define DENIAL_TARGET_SOCKADDR 3 /* family, port, addr (or a unix path in target) */
#define DENIAL_TARGET_INT 4      /* target_int = the argument (command, flags, id, fd) */

#define DENIAL_FLAG_TARGET_TRUNCATED 1
#define DENIAL_FLAG_TARGET_UNREADABLE 2
#define DENIAL_FLAG_CAP_INIT_NS 4 /* the failed capability check was against the initial userns */
#define DENIAL_FLAG_SUMMARY 8

#define DENIAL_NO_CAP 0xffffffff
/* In a cause's `cap` slot: an SELinux denial rather than a capability. */
#define DENIAL_CAUSE_SELINUX 0xfffffffe
/* errno stand-ins: a capability failure whose outcome is unknown, a seccomp kill. */
#define DENIAL_ERR_UNKNOWN 0
#define DENIAL_ERR_KILLED 1000
#define DENIAL_SECCOMP_MODE_FILTER 2
#define DENIAL_SIGSYS 31
#define DENIAL_SYS_SECCOMP 1
#define DENIAL_INIT_USER_NS_INUM 0xEFFFFFFDU
/* A failed capability check is the cause of a refusal only if the refusal follows quickly. */
#define DENIAL_CAUSE_MAX_AGE_NS 10000000ULL

struct denial_key {
    u64 cgroup_id;
    u32 syscall;
    u32 err;
    u32 source;
    u32 _pad;
};

struct denial_cap_key {
    u64 cgroup_id;
    u32 cap;
    u32 init_ns;
};

/* One (process, syscall, errno, source, target) combination inside the dedup window. */
struct denial_recent_key {
    u64 target_hash;
    u32 tgid;
    u32 syscall;
    u32 err;
    u32 source;
};

struct denial_recent {
    u64 last_sent_ns;
    u64 seen;      /* every refusal of this combination, sent or not (monotonic) */
    u64 sent_seen; /* `seen` when the last record was sent */
};

struct denial_cause {
    u64 ktime_ns;
    u32 syscall;
    u32 cap;
    u32 flags;
    u32 _pad;
};

/* Decoded by probes/denials.py (DenialRecord); tests/test_denials_probe.py keeps them in step. */
struct denial_record {
    u64 ktime_ns;
    u64 cgroup_id;
    u64 target_hash;
    s64 target_int;
    s64 target_int2;
    u64 seen; /* refusals of this combination so far, this one included (dedup entry) */
    u32 pid;
    u32 tid;
    u32 ppid;
    u32 uid;
    u32 gid;
    u32 syscall;
    u32 err;
    u32 source;
    u32 flags;
    u32 target_kind;
    u32 cause_cap;
    u16 family;
    u16 port; /* host order */
    u8 addr[16];
    char comm[16];
    char target[TARGET_LEN];
};

BPF_PERCPU_HASH(denial_counts, struct denial_key, u64, DENIAL_COUNTER_ENTRIES);
BPF_PERCPU_HASH(denial_cap_counts, struct denial_cap_key, u64, 4096);
/* Refusals whose key did not fit in a counter map: totals stay exact, without labels. */
BPF_PERCPU_ARRAY(denial_overflow, u64, 1);
BPF_PERCPU_ARRAY(denial_drops, u64, AUDITD_DROP_KINDS);
BPF_TABLE("lru_hash", struct denial_recent_key, struct denial_recent, denial_recent,
          DENIAL_RECENT_ENTRIES);
BPF_TABLE("lru_hash", u32, struct denial_cause, denial_causes, 10240);
/* Syscall numbers with a sys_exit hook here (filled from user space): a capability failure
 * inside one of them waits for the refusal; inside any other it is reported on its own. */
BPF_ARRAY(denial_hooked, u8, 512);
/* Kernel-side filter (from the policy's ignore list): refusals matching any of these are
 * counted but not sent. denial_quiet[0] says whether any is set, so no filter costs one lookup. */
BPF_ARRAY(denial_quiet, u8, 1);
BPF_HASH(denial_quiet_cgroups, u64, u8, 1024);
BPF_ARRAY(denial_quiet_syscalls, u8, 512);
BPF_HASH(denial_quiet_errnos, u32, u8, 64);
BPF_ARRAY(denial_quiet_sources, u8, 8);
BPF_RINGBUF_OUTPUT(denial_events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(denial_scratch, struct denial_record, 1);
#if DENIAL_SECCOMP_ERRNO
/* Entry marks for tasks under a seccomp filter: tid -> syscall number entered. */
BPF_TABLE("lru_hash", u32, u32, denial_entered, 10240);
#endif

#ifdef AUDITD_LAYOUT_CHECK
/* Only in the layout test: lets BCC describe the structs so Python can compare offsets. */
BPF_ARRAY(denial_record_layout, struct denial_record, 1);
BPF_ARRAY(denial_recent_layout, struct denial_recent, 1);
#endif

static __always_inline void denial_drop(u32 kind)
{
    u64 *n = denial_drops.lookup(&kind);
    if (n)
        (*n)++;
}

static __always_inline void denial_overflowed(void)
{
    u32 zero = 0;
    u64 *overflow = denial_overflow.lookup(&zero);
    if (overflow)
        (*overflow)++;
    denial_drop(AUDITD_DROP_COUNTER_FULL);
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
    denial_overflowed();
}

static __always_inline void denial_count_cap(struct denial_cap_key *key)
{
    u64 *n = denial_cap_counts.lookup(key);
    if (n) {
        (*n)++;
        return;
    }
    u64 one = 1;
    if (denial_cap_counts.insert(key, &one) == 0)
        return;
    n = denial_cap_counts.lookup(key);
    if (n)
        (*n)++;
    else
        denial_overflowed();
}

/* FNV-1a over the whole target, 8 bytes a step: the dedup key must depend on all of it, or a
 * flood of one path could hide a different one. `len` counts the string's bytes with its NUL;
 * bytes past it are masked off (the helper does not clear the rest of the buffer). */
static __always_inline u64 denial_hash(struct denial_record *r, long len)
{
    u64 h = 0xcbf29ce484222325ULL;
    u64 word = (u64)r->target_int;
    h = (h ^ word) * 0x100000001b3ULL;
    word = (u64)r->target_int2;
    h = (h ^ word) * 0x100000001b3ULL;
    word = ((u64)r->target_kind << 48) ^ ((u64)r->port << 32) ^ r->cause_cap;
    h = (h ^ word) * 0x100000001b3ULL;
    __builtin_memcpy(&word, &r->addr[0], 8);
    h = (h ^ word) * 0x100000001b3ULL;
    __builtin_memcpy(&word, &r->addr[8], 8);
    h = (h ^ word) * 0x100000001b3ULL;
    for (int i = 0; i < TARGET_LEN / 8; i++) {
        long left = len - i * 8;
        if (left <= 0)
            break;
        __builtin_memcpy(&word, &r->target[i * 8], 8);
        if (left < 8)
            word &= (1ULL << (left * 8)) - 1;
        h = (h ^ word) * 0x100000001b3ULL;
    }
    return h;
}

static __always_inline long denial_read_path(struct denial_record *r, u64 user_ptr)
{
    long n = bpf_probe_read_user_str(r->target, sizeof(r->target), (void *)user_ptr);
    if (n < 0) {
        r->flags |= DENIAL_FLAG_TARGET_UNREADABLE;
        r->target[0] = 0;
        return 0;
    }
    if (n == sizeof(r->target))
        r->flags |= DENIAL_FLAG_TARGET_TRUNCATED;
    return n;
}

/* Read the target from the argument value `arg` (`arg2` is the argument after it, kept for pids
 * and integers); returns the length of a string target, 0 otherwise. */
static __always_inline long denial_read_target(struct denial_record *r, int kind, u64 arg,
                                               u64 arg2)
{
    r->target_kind = kind;
    if (kind == DENIAL_TARGET_PATH)
        return denial_read_path(r, arg);
    if (kind == DENIAL_TARGET_PID || kind == DENIAL_TARGET_INT) {
        r->target_int = (s64)arg;
        r->target_int2 = (s64)arg2;
        return 0;
    }
    if (kind == DENIAL_TARGET_SOCKADDR) {
        u8 sa[28] = {};
        if (bpf_probe_read_user(sa, sizeof(sa), (void *)arg) < 0) {
            r->flags |= DENIAL_FLAG_TARGET_UNREADABLE;
            return 0;
        }
        r->family = sa[0] | (sa[1] << 8);
        r->port = (sa[2] << 8) | sa[3];
        if (r->family == 2) /* AF_INET */
            __builtin_memcpy(r->addr, &sa[4], 4);
        else if (r->family == 10) /* AF_INET6 */
            __builtin_memcpy(r->addr, &sa[8], 16);
        else if (r->family == 1) /* AF_UNIX: the path follows the family */
            return denial_read_path(r, arg + 2);
    }
    return 0;
}

/* Dedup: 1 if a record should be sent, 0 if this refusal is a repeat inside the window.
 * The record carries the combination's running count, from which user space tells how many
 * identical refusals it stands for. */
static __always_inline int denial_should_send(struct denial_record *r, u64 now)
{
    struct denial_recent_key key = {
        .target_hash = r->target_hash,
        .tgid = r->pid,
        .syscall = r->syscall,
        .err = r->err,
        .source = r->source,
    };
    struct denial_recent *seen = denial_recent.lookup(&key);
    if (seen) {
        u64 count = __sync_fetch_and_add(&seen->seen, 1) + 1;
        if (now - seen->last_sent_ns < DENIAL_WINDOW_NS)
            return 0;
        r->seen = count;
        seen->last_sent_ns = now;
        seen->sent_seen = count;
        return 1;
    }
    struct denial_recent fresh = {.last_sent_ns = now, .seen = 1, .sent_seen = 1};
    denial_recent.update(&key, &fresh);
    r->seen = 1;
    return 1;
}

static __always_inline int denial_quieted(u64 cgroup_id, u32 syscall, u32 err, u32 source)
{
    u32 zero = 0;
    u8 *on = denial_quiet.lookup(&zero);
    if (!on || !*on)
        return 0;
    if (denial_quiet_cgroups.lookup(&cgroup_id) || denial_quiet_errnos.lookup(&err))
        return 1;
    u8 *hit = denial_quiet_syscalls.lookup(&syscall);
    if (hit && *hit)
        return 1;
    hit = denial_quiet_sources.lookup(&source);
    return hit && *hit;
}

/* Count nothing, fill and send one record (unless deduplicated or quieted). */
static __always_inline void denial_emit(u32 syscall, u32 err, u32 source, u32 cause_cap,
                                       u32 cause_flags, int kind, u64 arg, u64 arg2)
{
    u64 now = bpf_ktime_get_ns();
    u64 cgroup_id = bpf_get_current_cgroup_id();
    if (denial_quieted(cgroup_id, syscall, err, source))
        return; /* counted already; the policy asked not to send these records */

    /* Built in per-CPU scratch, not reserved in the ring: a repeat must cost no ring space
     * (a discarded reservation still holds its place until the reader passes it, so a flood of
     * repeats would fill the ring and push out the distinct records that matter). */
    u32 zero = 0;
    struct denial_record *r = denial_scratch.lookup(&zero);
    if (!r)
        return;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u64 uid_gid = bpf_get_current_uid_gid();
    void *task = (void *)bpf_get_current_task();
    r->ktime_ns = now;
    r->cgroup_id = cgroup_id;
    r->target_int = 0;
    r->target_int2 = 0;
    r->seen = 1;
    r->pid = pid_tgid >> 32;
    r->tid = (u32)pid_tgid;
    r->ppid = auditd_task_ppid(task);
    r->uid = (u32)uid_gid;
    r->gid = uid_gid >> 32;
    r->syscall = syscall;
    r->err = err;
    r->source = source;
    r->flags = cause_flags;
    r->cause_cap = cause_cap;
    r->family = 0;
    r->port = 0;
    __builtin_memset(r->addr, 0, sizeof(r->addr));
    bpf_get_current_comm(r->comm, sizeof(r->comm));
    r->target[0] = 0;
    long len = denial_read_target(r, kind, arg, arg2);
    r->target_hash = denial_hash(r, len);
    if (!denial_should_send(r, now))
        return;
    if (denial_events.ringbuf_output(r, sizeof(*r), 0) != 0)
        denial_drop(AUDITD_DROP_RINGBUF);
}

/* The cause a failed capability check left for this thread, if it belongs to this syscall. */
static __always_inline u32 denial_take_cause(u32 tid, u32 syscall, u32 *flags)
{
    struct denial_cause *cause = denial_causes.lookup(&tid);
    if (!cause)
        return DENIAL_NO_CAP;
    u32 cap = DENIAL_NO_CAP;
    if (cause->syscall == syscall && bpf_ktime_get_ns() - cause->ktime_ns < DENIAL_CAUSE_MAX_AGE_NS) {
        cap = cause->cap;
        *flags = cause->flags;
    }
    denial_causes.delete(&tid);
    return cap;
}

/* sys_exit_* and sys_enter_* records share one layout up to the fields read here. */
struct denial_exit_args {
    u64 common;
    int syscall_nr;
    int _pad;
    long ret;
};
struct denial_enter_args {
    u64 common;
    int syscall_nr;
    int _pad;
    /* the arguments follow, 8 bytes each: read with bpf_probe_read_kernel, as syscalls with
     * fewer arguments have shorter records */
};

/* What a hooked syscall's target is: filled from user space (probes/denials.py HOOKS). */
struct denial_spec {
    u32 kind;
    u32 index;
};
BPF_ARRAY(denial_specs, struct denial_spec, 512);

#if !AUDITD_HAVE_TASK_PT_REGS
/* No BTF task: the target argument is saved per thread at entry. */
BPF_HASH(denial_pending, u32, u64, 10240);
#endif

/* Attached by user space to sys_exit_<name> of every hooked syscall: one program, so the
 * kernel keeps one copy and unrelated syscalls pay nothing. */
int denial_exit_hook(struct denial_exit_args *args)
{
    long ret = args->ret;
    if (!auditd_is_refusal(ret))
        return 0;
    u32 syscall = (u32)args->syscall_nr;
    struct denial_spec *spec = denial_specs.lookup(&syscall);
    if (!spec)
        return 0;
    int kind = spec->kind;
    u32 err = (u32)-ret;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u32 cause_flags = 0;
    u32 cap = denial_take_cause(tid, syscall, &cause_flags);
    u32 source = DENIAL_SOURCE_SYSCALL;
    if (cap == DENIAL_CAUSE_SELINUX) {
        source = DENIAL_SOURCE_SELINUX;
    } else if (cap != DENIAL_NO_CAP) {
        source = DENIAL_SOURCE_CAPABILITY;
        struct denial_cap_key ckey = {
            .cgroup_id = bpf_get_current_cgroup_id(),
            .cap = cap,
            .init_ns = cause_flags & DENIAL_FLAG_CAP_INIT_NS ? 1 : 0,
        };
        denial_count_cap(&ckey);
    }
#if DENIAL_SECCOMP_ERRNO
    if (source == DENIAL_SOURCE_SYSCALL) {
        int mode = 0;
        void *task = (void *)bpf_get_current_task();
        bpf_probe_read_kernel(&mode, sizeof(mode), task + OFF_TASK_SECCOMP_MODE);
        if (mode == DENIAL_SECCOMP_MODE_FILTER) {
            u32 *entered = denial_entered.lookup(&tid);
            if (!entered || *entered != syscall)
                source = DENIAL_SOURCE_SECCOMP; /* refused before the syscall was entered */
            if (entered)
                denial_entered.delete(&tid);
        }
    }
#endif
    struct denial_key key = {
        .cgroup_id = bpf_get_current_cgroup_id(),
        .syscall = syscall,
        .err = err,
        .source = source,
    };
    denial_count(&key);
#if AUDITD_HAVE_TASK_PT_REGS
    u32 index = spec->index;
    u64 arg = auditd_syscall_arg(index), arg2 = auditd_syscall_arg(index + 1);
#else
    u64 arg = 0, arg2 = 0;
    u64 *saved = denial_pending.lookup(&tid);
    if (saved) {
        arg = *saved;
        denial_pending.delete(&tid);
    } else if (kind == DENIAL_TARGET_PATH) {
        kind = DENIAL_TARGET_NONE; /* entry not seen (map full, or attached mid-syscall) */
    }
#endif
    denial_emit(syscall, err, source, cap, cause_flags, kind, arg, arg2);
    return 0;
}

/* Attached to sys_enter_<name> of the hooked syscalls only where needed: to mark entry for
 * tasks under a seccomp filter, and on kernels without the BTF task to save the target. */
int denial_enter_hook(struct denial_enter_args *args)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u32 syscall = (u32)args->syscall_nr;
#if DENIAL_SECCOMP_ERRNO
    int mode = 0;
    void *task = (void *)bpf_get_current_task();
    bpf_probe_read_kernel(&mode, sizeof(mode), task + OFF_TASK_SECCOMP_MODE);
    if (mode == DENIAL_SECCOMP_MODE_FILTER)
        denial_entered.update(&tid, &syscall);
#endif
#if !AUDITD_HAVE_TASK_PT_REGS
    struct denial_spec *spec = denial_specs.lookup(&syscall);
    if (!spec || spec->kind == DENIAL_TARGET_NONE)
        return 0;
    u32 index = spec->index;
    if (index > 5)
        return 0;
    u64 arg = 0;
    bpf_probe_read_kernel(&arg, sizeof(arg), (void *)args + 16 + 8 * index);
    if (denial_pending.update(&tid, &arg) != 0)
        denial_drop(AUDITD_DROP_PENDING_FULL);
#endif
    return 0;
}

/* A failed capability check inside a hooked syscall: left as the cause of the refusal that
 * follows in the same thread, and counted (per capability) only if that refusal comes. Checks
 * in other syscalls are not reported: the tracepoint cannot tell a refusing check from a silent
 * probe (every unprivileged mmap fails a no-audit CAP_SYS_ADMIN check in the overcommit
 * accounting), so alone they would be noise. */
TRACEPOINT_PROBE(capability, cap_capable)
{
    if (args->ret == 0)
        return 0;
    u32 cap = args->cap;
    /* CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER: the kernel tries these after every
     * failed permission-bit check, so their failure is the DAC refusal itself, not a cause. */
    if (cap >= 1 && cap <= 3)
        return 0;
    long nr = auditd_current_syscall();
    if (nr < 0 || nr >= 512)
        return 0; /* not in a syscall: a kernel thread, or no BTF task to tell */
    u32 syscall = nr;
    u8 *hooked = denial_hooked.lookup(&syscall);
    if (!hooked || !*hooked)
        return 0;
    u32 flags = 0;
#if AUDITD_STRUCT_READS
    if (auditd_read_u32((void *)args->target_ns, OFF_USER_NS_INUM) == DENIAL_INIT_USER_NS_INUM)
        flags |= DENIAL_FLAG_CAP_INIT_NS;
#endif
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct denial_cause cause = {
        .ktime_ns = bpf_ktime_get_ns(),
        .syscall = syscall,
        .cap = cap,
        .flags = flags,
    };
    denial_causes.update(&tid, &cause);
    return 0;
}

#ifdef DENIAL_SELINUX
/* An enforced SELinux denial (an audited AVC decision) inside a hooked syscall: the cause of
 * the refusal that follows. Its rights and contexts come from the AVC audit record. */
TRACEPOINT_PROBE(avc, selinux_audited)
{
    if (args->denied == 0 || args->result == 0)
        return 0; /* allowed, or denied in permissive mode */
    long nr = auditd_current_syscall();
    if (nr < 0 || nr >= 512)
        return 0;
    u32 syscall = nr;
    u8 *hooked = denial_hooked.lookup(&syscall);
    if (!hooked || !*hooked)
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct denial_cause cause = {
        .ktime_ns = bpf_ktime_get_ns(),
        .syscall = syscall,
        .cap = DENIAL_CAUSE_SELINUX,
    };
    denial_causes.update(&tid, &cause);
    return 0;
}
#endif

/* seccomp killing a task: SIGSYS with si_code SYS_SECCOMP, raised in the offending syscall. */
TRACEPOINT_PROBE(signal, signal_generate)
{
    if (args->sig != DENIAL_SIGSYS || args->code != DENIAL_SYS_SECCOMP)
        return 0;
    long nr = auditd_current_syscall();
    u32 syscall = nr < 0 ? 0xffffffff : (u32)nr;
    struct denial_key key = {
        .cgroup_id = bpf_get_current_cgroup_id(),
        .syscall = syscall,
        .err = DENIAL_ERR_KILLED,
        .source = DENIAL_SOURCE_SECCOMP,
    };
    denial_count(&key);
    denial_emit(syscall, DENIAL_ERR_KILLED, DENIAL_SOURCE_SECCOMP, DENIAL_NO_CAP, 0,
                DENIAL_TARGET_INT, (u64)args->errno, 0);
    return 0;
}

