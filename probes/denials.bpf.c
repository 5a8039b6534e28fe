/* Denials: every refusal the kernel reports through a tracepoint.
 *
 *  - syscalls refused with EACCES or EPERM, from per-syscall sys_exit tracepoints (only the
 *    hooked syscalls pay anything; the program returns at once unless the result is a refusal),
 *    with the target read from the syscall's own arguments;
 *  - failed capability checks (capability:cap_capable, ret != 0): the cause of the refusal that
 *    follows in the same thread;
 *  - seccomp: kills (SIGSYS from signal:signal_generate) and, for tasks under a seccomp filter,
 *    errno refusals (seccomp answers before sys_enter fires, so no entry mark means seccomp).
 *
 * Counting is exact and separate from records: denial_count_* (per cgroup, syscall, errno,
 * source: a slot table, array lookups only) and denial_cap_counts (per cgroup, capability) are
 * incremented for every refusal.
 *
 * What a repeated refusal costs (the flood case) is kept small, in this order: the exact count;
 * the target read from the caller's memory (the dedup key is its content, never its address:
 * one buffer rewritten with new paths must not pass for one target); a keyed hash of it; one
 * per-CPU cache probe. A record is built (ids, credentials, comm, parent, executable, time)
 * and sent only for a (process, syscall, errno, source, target) combination not seen within
 * the dedup window. Repeats are counted in the cache entry (`pending`, moved into the LRU
 * entry's `seen` when the cache slot changes hands or the window passes) and reported with the
 * next record or a summary (user space adds what the CPUs' caches still hold). A record that
 * cannot be sent is counted in denial_drops. The process is (tgid, start time): a reused pid
 * is another process.
 *
 * Kernel structs are read with plain loads the verifier types from BTF (AUDITD_BTF_LOADS), else
 * with bpf_probe_read_kernel at BTF or header offsets (task.h), else not at all.
 *
 * The hooked syscalls and where their targets are come from user space (probes/denials.py
 * HOOKS): it attaches denial_exit_hook to each one's sys_exit tracepoint and fills
 * denial_specs; access/faccessat* and stat* are not hooked on purpose (EACCES there answers a
 * question, it refuses nothing, and shells ask constantly).
 *
 * Parameters (-D): DENIAL_COUNT_SLOTS (power of two), DENIAL_RECENT_ENTRIES,
 * DENIAL_CACHE_ENTRIES (power of two, per CPU), DENIAL_WINDOW_J and DENIAL_CAUSE_J (jiffies),
 * DENIAL_CAP_BTF (cap_capable as tp_btf), TARGET_LEN, DENIAL_EXE_DEPTH, plus those of common.h
 * and task.h.
 */
#include "common.h"
#include "task.h"

/* BCC copies tracepoint field types verbatim into the argument structs it generates; these
 * are only ever pointers here, so incomplete types keep kernel headers out of the program. */
typedef struct siginfo siginfo_t;
typedef struct __user_cap_header_struct *cap_user_header_t;
typedef struct __user_cap_data_struct *cap_user_data_t;

#ifndef DENIAL_COUNT_SLOTS
#define DENIAL_COUNT_SLOTS 16384
#endif
#ifndef DENIAL_RECENT_ENTRIES
#define DENIAL_RECENT_ENTRIES 16384
#endif
#ifndef DENIAL_CACHE_ENTRIES
#define DENIAL_CACHE_ENTRIES 1024
#endif
#ifndef DENIAL_WINDOW_J
#define DENIAL_WINDOW_J 2500ULL /* 10 s at HZ=250 */
#endif
#ifndef DENIAL_CAUSE_J
#define DENIAL_CAUSE_J 3ULL /* a cause is the refusal's only if it came within ~10 ms */
#endif
#ifndef DENIAL_CAP_BTF
#define DENIAL_CAP_BTF 0
#endif
#ifndef TARGET_LEN
#define TARGET_LEN 256
#endif
#ifndef DENIAL_EXE_DEPTH
#define DENIAL_EXE_DEPTH 16 /* path components (a power of two) */
#endif
#define DENIAL_EXE_NAME 64 /* bytes of one path component (longer ones are cut) */
#ifndef AUDITD_HAVE_SECCOMP_MODE
#define AUDITD_HAVE_SECCOMP_MODE 0
#endif
#ifndef AUDITD_HAVE_CGROUP_LOADS
#define AUDITD_HAVE_CGROUP_LOADS 0
#endif
#ifndef AUDITD_HAVE_EXE_WALK
#define AUDITD_HAVE_EXE_WALK 0
#endif
/* Telling seccomp errno refusals apart needs the task's seccomp mode and exit-time arguments
 * (so sys_enter is free to serve as the entry mark). */
#define DENIAL_SECCOMP_ERRNO (AUDITD_HAVE_SECCOMP_MODE && AUDITD_HAVE_TASK_PT_REGS)
/* Per-task marks (cause, entry) in task storage where the verifier knows the task's BTF. */
#define DENIAL_TASK_MARKS AUDITD_BTF_LOADS
/* The executable's path, walked in the kernel (else user space reads /proc/PID/exe). */
#define DENIAL_EXE (AUDITD_BTF_LOADS && AUDITD_HAVE_EXE_WALK)

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
#define DENIAL_FLAG_EXE_READ 16   /* the kernel walked the executable's path (exe) */
#define DENIAL_FLAG_EXE_TRUNCATED 32 /* leading components left out (too deep or too long) */
#define DENIAL_FLAG_EXE_NAME_CUT 64  /* a component longer than DENIAL_EXE_NAME was cut */

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
#define DENIAL_NR 512

#define DENIAL_MIX 0x9E3779B97F4A7C15ULL

struct denial_cap_key {
    u64 cgroup_id;
    u32 cap;
    u32 init_ns;
};

/* A counter slot's owner: (cgroup id | 1 << 63: never 0, 0 is free) and the rest of the key
 * (syscall << 32 | errno << 8 | source | 1 << 31). */
struct denial_slot {
    u64 cgroup;
    u64 rest;
};

/* One (process, syscall, errno, source, target) combination inside the dedup window. */
struct denial_recent_key {
    u64 target_hash;
    u64 start_time;
    u32 tgid;
    u32 syscall;
    u32 err;
    u32 source;
};

struct denial_recent {
    u64 last_sent_ns; /* bpf_ktime_get_ns() of the last record sent (for user space) */
    u64 last_sent_j;  /* the same in jiffies (for the window test) */
    u64 seen;         /* refusals of this combination counted here, sent or not */
};

/* The per-CPU cache in front of denial_recent: a repeat inside its window costs an array
 * lookup and a compare. */
struct denial_cached {
    struct denial_recent_key key;
    u64 last_sent_j;
    u64 pending; /* repeats counted here, not yet in denial_recent's `seen` */
};

struct denial_marks {
    u64 cause_j;
    u32 cause_syscall;
    u32 cause_cap;
    u32 cause_flags;
    u32 entered; /* syscall number + 1 seen entering, for tasks under a seccomp filter */
};

/* Decoded by probes/denials.py (DenialRecord); tests/test_denials_probe.py keeps them in step.
 * Sent without the unused end of exe (its components past exe_count, in steps). */
struct denial_record {
    u64 ktime_ns;
    u64 cgroup_id;
    u64 target_hash;
    s64 target_int;
    s64 target_int2;
    u64 seen; /* refusals of this combination so far, this one included (dedup entry) */
    u64 start_time;
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
    u32 exe_count; /* components in exe */
    u32 _pad;
    /* The executable's path components, leaf first, DENIAL_EXE_NAME bytes each (one array:
     * the compiler's type description keeps only an array's first dimension). */
    char exe[DENIAL_EXE_DEPTH * DENIAL_EXE_NAME];
};

BPF_ARRAY(denial_count_owner, struct denial_slot, DENIAL_COUNT_SLOTS);
/* [DENIAL_COUNT_SLOTS]: refusals whose key found no slot (exact, without labels). */
BPF_PERCPU_ARRAY(denial_count_vals, u64, DENIAL_COUNT_SLOTS + 1);
BPF_PERCPU_HASH(denial_cap_counts, struct denial_cap_key, u64, 4096);
/* Refusals whose capability key did not fit: totals stay exact, without labels. */
BPF_PERCPU_ARRAY(denial_overflow, u64, 1);
BPF_PERCPU_ARRAY(denial_drops, u64, AUDITD_DROP_KINDS);
BPF_TABLE("lru_hash", struct denial_recent_key, struct denial_recent, denial_recent,
          DENIAL_RECENT_ENTRIES);
BPF_PERCPU_ARRAY(denial_cache, struct denial_cached, DENIAL_CACHE_ENTRIES);
/* [0]: the dedup hash's key, random per start (user space): without it a path crafted to
 * collide with a flooded one could hide inside the flood. */
BPF_ARRAY(denial_seed, u64, 1);
/* [0]: jiffies of the last failed capability check or SELinux denial in a hooked syscall: no
 * refusal looks for a cause unless one came within DENIAL_CAUSE_J. */
BPF_ARRAY(denial_cause_epoch, u64, 1);
/* Syscall numbers with a sys_exit hook here (filled from user space): a capability failure
 * inside one of them waits for the refusal; inside any other it is not reported. */
BPF_ARRAY(denial_hooked, u8, DENIAL_NR);
/* Kernel-side filter (from the policy's ignore list): refusals matching any of these are
 * counted but not sent. denial_quiet[0] says whether any is set, so no filter costs one lookup. */
BPF_ARRAY(denial_quiet, u8, 1);
BPF_HASH(denial_quiet_cgroups, u64, u8, 1024);
BPF_ARRAY(denial_quiet_syscalls, u8, DENIAL_NR);
BPF_HASH(denial_quiet_errnos, u32, u8, 64);
BPF_ARRAY(denial_quiet_sources, u8, 8);
BPF_RINGBUF_OUTPUT(denial_events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(denial_scratch, struct denial_record, 1);
#if DENIAL_EXE
BPF_PROG_ARRAY(denial_tail, 1); /* [0]: denial_send, set by user space */
#endif
#if DENIAL_TASK_MARKS
BPF_TASK_STORAGE(denial_marks, struct denial_marks);
#else
/* No BTF task: causes and entry marks per thread id. */
BPF_TABLE("lru_hash", u32, struct denial_marks, denial_marks_by_tid, 10240);
#endif

#ifdef AUDITD_LAYOUT_CHECK
/* Only in the layout test: lets the compiler describe the structs so Python can compare. */
BPF_ARRAY(denial_record_layout, struct denial_record, 1);
BPF_ARRAY(denial_recent_layout, struct denial_recent, 1);
BPF_ARRAY(denial_cached_layout, struct denial_cached, 1);
#endif

static __always_inline void denial_drop(u32 kind)
{
    u64 *n = denial_drops.lookup(&kind);
    if (n)
        (*n)++;
}

/* The exact count: open addressing over a shared owner table, per-CPU counts, array lookups
 * only (inlined by the verifier). A key may end up in two slots when two CPUs claim at once;
 * user space sums slots by key, so counts stay exact. No slot: the last one (exact total). */
static __always_inline void denial_count(u64 cgroup_id, u32 syscall, u32 err, u32 source)
{
    u64 owner = cgroup_id | (1ULL << 63);
    u64 rest = ((u64)syscall << 32) | ((u64)(err & 0x7fffff) << 8) | (source & 0xff) | (1ULL << 31);
    u32 start = (u32)(((owner ^ (rest * DENIAL_MIX)) * DENIAL_MIX) >> 40);
    u32 at = DENIAL_COUNT_SLOTS;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        u32 s = (start + i) & (DENIAL_COUNT_SLOTS - 1);
        struct denial_slot *o = denial_count_owner.lookup(&s);
        if (!o)
            break;
        u64 seen = o->cgroup;
        if (seen == owner && o->rest == rest) {
            at = s;
            break;
        }
        if (seen == 0 && __sync_val_compare_and_swap(&o->cgroup, 0, owner) == 0) {
            o->rest = rest;
            at = s;
            break;
        }
    }
    if (at == DENIAL_COUNT_SLOTS)
        denial_drop(AUDITD_DROP_COUNTER_FULL);
    u64 *n = denial_count_vals.lookup(&at);
    if (n)
        (*n)++;
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

/* One step of the keyed hash: multiply-xorshift, so no input difference passes through
 * unchanged whatever the key (plain FNV lets a flipped top bit do that). */
static __always_inline u64 denial_mix(u64 h, u64 word)
{
    h = (h ^ word) * 0x100000001b3ULL;
    return h ^ (h >> 29);
}

/* The whole target, keyed by the per-start seed: the dedup key must depend on all of it, or a
 * flood of one path could hide a different one. `len` counts the string's bytes with its NUL;
 * bytes past it are masked off (the helper does not clear the rest of the buffer). */
static __always_inline u64 denial_hash(struct denial_record *r, long len, u64 seed)
{
    u64 h = seed ^ 0xcbf29ce484222325ULL;
    u64 word;
    h = denial_mix(h, (u64)r->target_int);
    h = denial_mix(h, (u64)r->target_int2);
    h = denial_mix(h, ((u64)r->target_kind << 48) ^ ((u64)r->port << 32) ^ r->cause_cap);
    __builtin_memcpy(&word, &r->addr[0], 8);
    h = denial_mix(h, word);
    __builtin_memcpy(&word, &r->addr[8], 8);
    h = denial_mix(h, word);
    for (int i = 0; i < TARGET_LEN / 8; i++) {
        long left = len - i * 8;
        if (left <= 0)
            break;
        __builtin_memcpy(&word, &r->target[i * 8], 8);
        if (left < 8)
            word &= (1ULL << (left * 8)) - 1;
        h = denial_mix(h, word);
    }
    return denial_mix(h, seed);
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
    r->target_int = 0;
    r->target_int2 = 0;
    r->family = 0;
    r->port = 0;
    __builtin_memset(r->addr, 0, sizeof(r->addr));
    r->target[0] = 0;
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

static __always_inline u64 denial_cgroup(kptr_t task)
{
#if AUDITD_BTF_LOADS && AUDITD_HAVE_CGROUP_LOADS
    kptr_t cgroup = K_PTR(K_PTR(task, OFF_TASK_CGROUPS), OFF_CSS_SET_DFL_CGRP);
    return K_U64(K_PTR(cgroup, OFF_CGROUP_KN), OFF_KERNFS_NODE_ID);
#else
    return bpf_get_current_cgroup_id();
#endif
}

static __always_inline int denial_same_key(struct denial_recent_key *a, struct denial_recent_key *b)
{
    return a->target_hash == b->target_hash && a->start_time == b->start_time &&
           a->tgid == b->tgid && a->syscall == b->syscall && a->err == b->err &&
           a->source == b->source;
}

/* Dedup: the number of refusals this record stands for (its combination's running count) if a
 * record should be sent, 0 if this refusal is a repeat inside the window. */
static __always_inline u64 denial_should_send(struct denial_recent_key *key, u64 now_j)
{
    u32 at = (u32)(((key->target_hash ^ key->start_time ^ ((u64)key->tgid << 32) ^
                     ((u64)key->syscall << 12) ^ ((u64)key->err << 4) ^ key->source) *
                    DENIAL_MIX) >> 40) & (DENIAL_CACHE_ENTRIES - 1);
    struct denial_cached *c = denial_cache.lookup(&at);
    u64 flush = 1;
    if (c) {
        if (denial_same_key(&c->key, key)) {
            if (now_j - c->last_sent_j < DENIAL_WINDOW_J) {
                c->pending++;
                return 0; /* the flood case */
            }
            flush += c->pending; /* this key's repeats go into its entry below */
            c->pending = 0;
        } else if (c->pending) {
            /* The slot changes hands: the old key's repeats go into its entry. */
            struct denial_recent *old = denial_recent.lookup(&c->key);
            if (old)
                __sync_fetch_and_add(&old->seen, c->pending);
            c->pending = 0;
        }
    }
    struct denial_recent *e = denial_recent.lookup(key);
    u64 count = flush;
    if (e) {
        count = __sync_fetch_and_add(&e->seen, flush) + flush;
        if (now_j - e->last_sent_j < DENIAL_WINDOW_J) {
            if (c) { /* another CPU sent it in this window: cache that */
                c->key = *key;
                c->last_sent_j = e->last_sent_j;
            }
            return 0;
        }
        e->last_sent_j = now_j;
        e->last_sent_ns = bpf_ktime_get_ns();
    } else {
        struct denial_recent fresh = {
            .last_sent_ns = bpf_ktime_get_ns(), .last_sent_j = now_j, .seen = flush};
        if (denial_recent.insert(key, &fresh) != 0) {
            /* Another CPU inserted it first: count there, and let that CPU's record stand. */
            e = denial_recent.lookup(key);
            if (e)
                __sync_fetch_and_add(&e->seen, flush);
            return 0;
        }
    }
    if (c) {
        c->key = *key;
        c->last_sent_j = now_j;
        c->pending = 0;
    }
    return count;
}

#if DENIAL_EXE
/* A word of kernel memory, 0 when unreadable (the helper zeroes what it cannot read): no
 * branch, so a failed read does not split the verifier's view of the walk in two. */
static __always_inline u64 denial_read(u64 addr)
{
    u64 value = 0;
    bpf_probe_read_kernel(&value, sizeof(value), (const void *)addr);
    return value;
}

/* The executable's path from the process's own root, leaf first, one component per slot:
 * mm->exe_file's dentries up through their parents, across mount points (a mount's parent and
 * mount point), to the task's root. Read as plain kernel memory (bpf_probe_read_kernel): a
 * mount is found from its embedded vfsmount, which typed loads cannot step back from, and the
 * walk needs one kind of pointer throughout. At most DENIAL_EXE_DEPTH components (those nearest
 * the root left out), names cut at DENIAL_EXE_NAME bytes. */
static __always_inline void denial_exe(struct denial_record *r, kptr_t task)
{
    kptr_t file = K_PTR(K_PTR(task, OFF_TASK_MM), OFF_MM_EXE_FILE);
    if (!file)
        return; /* a kernel thread, or an exiting task */
    r->flags |= DENIAL_FLAG_EXE_READ;
    u64 fs = (u64)K_PTR(task, OFF_TASK_FS);
    /* Mounts by their struct mount. */
    u64 root_d = denial_read(fs + OFF_FS_ROOT + OFF_PATH_DENTRY);
    u64 root_mount = denial_read(fs + OFF_FS_ROOT + OFF_PATH_MNT) - OFF_MOUNT_MNT;
    u64 mount = denial_read((u64)file + OFF_FILE_PATH + OFF_PATH_MNT) - OFF_MOUNT_MNT;
    u64 d = denial_read((u64)file + OFF_FILE_PATH + OFF_PATH_DENTRY);
    u64 top = denial_read(mount + OFF_MOUNT_MNT + OFF_VFSMOUNT_ROOT);
    for (u32 i = 0; i < DENIAL_EXE_DEPTH; i++) {
        if (!d || (d == root_d && mount == root_mount))
            return;
        if (d == top) { /* the top of a mount: on from where it is mounted */
            u64 parent = denial_read(mount + OFF_MOUNT_PARENT);
            if (!parent || parent == mount)
                return; /* the namespace's root mount */
            d = denial_read(mount + OFF_MOUNT_MOUNTPOINT);
            mount = parent;
            top = denial_read(mount + OFF_MOUNT_MNT + OFF_VFSMOUNT_ROOT);
            /* A mount point may be the parent mount's root as well (mounts stacked on one
             * directory, or on the root): stop there rather than loop. */
            if (!d || (d == root_d && mount == root_mount) || d == top)
                return;
        }
        u64 up = denial_read(d + OFF_DENTRY_PARENT);
        if (!up || up == d)
            return;
        long n = bpf_probe_read_kernel_str(&r->exe[i * DENIAL_EXE_NAME], DENIAL_EXE_NAME,
                                           (void *)denial_read(d + OFF_DENTRY_NAME));
        if (n <= 0)
            return;
        if (n == DENIAL_EXE_NAME)
            r->flags |= DENIAL_FLAG_EXE_NAME_CUT;
        r->exe_count = i + 1;
        d = up;
    }
    r->flags |= DENIAL_FLAG_EXE_TRUNCATED; /* DENIAL_EXE_DEPTH components, and more above */
}
#endif

/* The current process's id (a typed load where allowed: no helper call on the hot path). */
static __always_inline u32 denial_tgid(kptr_t task)
{
#if AUDITD_BTF_LOADS
    return K_U32(task, OFF_TASK_TGID);
#else
    return bpf_get_current_pid_tgid() >> 32;
#endif
}

/* Count nothing; send one record unless it is a repeat inside the window or quieted. */
static __always_inline void denial_emit(void *ctx, kptr_t task, u64 cgroup_id, u64 now_j,
                                        u32 syscall, u32 err, u32 source, u32 cause_cap,
                                        u32 cause_flags, int kind, u64 arg, u64 arg2)
{
    if (denial_quieted(cgroup_id, syscall, err, source))
        return; /* counted already; the policy asked not to send these records */
    /* Built in per-CPU scratch, not reserved in the ring: a repeat must cost no ring space. */
    u32 zero = 0;
    struct denial_record *r = denial_scratch.lookup(&zero);
    if (!r)
        return;
    r->flags = cause_flags;
    r->cause_cap = cause_cap;
    long len = denial_read_target(r, kind, arg, arg2);
    u64 *seed = denial_seed.lookup(&zero);
    r->target_hash = denial_hash(r, len, seed ? *seed : 0);
    struct denial_recent_key key = {
        .target_hash = r->target_hash,
        .start_time = auditd_process_start(task),
        .tgid = denial_tgid(task),
        .syscall = syscall,
        .err = err,
        .source = source,
    };
    u64 seen = denial_should_send(&key, now_j);
    if (!seen)
        return;
    /* A new combination, or a new window: the rest of the record. */
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u64 uid_gid = bpf_get_current_uid_gid();
    r->ktime_ns = bpf_ktime_get_ns();
    r->cgroup_id = cgroup_id;
    r->seen = seen;
    r->start_time = key.start_time;
    r->pid = key.tgid;
    r->tid = (u32)pid_tgid;
#if AUDITD_STRUCT_READS
    r->ppid = K_U32(K_PTR(task, OFF_TASK_REAL_PARENT), OFF_TASK_TGID);
#else
    r->ppid = 0;
#endif
    r->uid = (u32)uid_gid;
    r->gid = uid_gid >> 32;
    r->syscall = syscall;
    r->err = err;
    r->source = source;
    bpf_get_current_comm(r->comm, sizeof(r->comm));
    r->exe_count = 0;
#if DENIAL_EXE
    /* The executable's path and the sending, in a program of their own (denial_send): verified
     * apart, the path walk does not multiply with every path that leads here. */
    denial_tail.call(ctx, 0);
#endif
    /* No tail call (not loaded yet): the record without its executable. */
    if (denial_events.ringbuf_output(r, offsetof(struct denial_record, exe), 0) != 0)
        denial_drop(AUDITD_DROP_RINGBUF);
}

#if DENIAL_EXE
/* The end of denial_emit for a new record: the executable's path, then only the used
 * components go out, in sizes the verifier sees as constants. */
int denial_send(void *ctx)
{
    u32 zero = 0;
    struct denial_record *r = denial_scratch.lookup(&zero);
    if (!r)
        return 0;
    denial_exe(r, K_TASK());
    u32 used = r->exe_count, size = sizeof(*r);
    if (used == 0)
        size = offsetof(struct denial_record, exe);
    else if (used <= 2)
        size = offsetof(struct denial_record, exe) + 2 * DENIAL_EXE_NAME;
    else if (used <= 4)
        size = offsetof(struct denial_record, exe) + 4 * DENIAL_EXE_NAME;
    else if (used <= 8)
        size = offsetof(struct denial_record, exe) + 8 * DENIAL_EXE_NAME;
    if (denial_events.ringbuf_output(r, size, 0) != 0)
        denial_drop(AUDITD_DROP_RINGBUF);
    return 0;
}
#endif

/* The per-thread marks of `task`, created when `create`. */
static __always_inline struct denial_marks *denial_marks_of(kptr_t task, int create)
{
#if DENIAL_TASK_MARKS
    return denial_marks.task_storage_get((struct task_struct *)task, 0,
                                         create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
#else
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct denial_marks *m = denial_marks_by_tid.lookup(&tid);
    if (m || !create)
        return m;
    struct denial_marks fresh = {};
    denial_marks_by_tid.update(&tid, &fresh);
    return denial_marks_by_tid.lookup(&tid);
#endif
}

/* The cause a failed capability check (or SELinux) left for this thread, if it belongs to
 * this syscall and came just before; consumed either way. Looked up only when some cause came
 * recently (the epoch): a flood of DAC refusals pays one array lookup for it. */
static __always_inline u32 denial_take_cause(kptr_t task, u32 syscall, u64 now_j, u32 *flags,
                                             struct denial_marks **marks)
{
    u32 zero = 0;
    u64 *epoch = denial_cause_epoch.lookup(&zero);
    if (!epoch || now_j - *epoch > DENIAL_CAUSE_J)
        return DENIAL_NO_CAP;
    struct denial_marks *m = denial_marks_of(task, 0);
    *marks = m;
    if (!m || !m->cause_j)
        return DENIAL_NO_CAP;
    u32 cap = DENIAL_NO_CAP;
    if (m->cause_syscall == syscall && now_j - m->cause_j <= DENIAL_CAUSE_J) {
        cap = m->cause_cap;
        *flags = m->cause_flags;
    }
    m->cause_j = 0;
    return cap;
}

static __always_inline void denial_set_cause(kptr_t task, u32 syscall, u32 cap, u32 flags)
{
    struct denial_marks *m = denial_marks_of(task, 1);
    if (!m)
        return;
    u64 now_j = bpf_jiffies64();
    m->cause_j = now_j;
    m->cause_syscall = syscall;
    m->cause_cap = cap;
    m->cause_flags = flags;
    u32 zero = 0;
    u64 *epoch = denial_cause_epoch.lookup(&zero);
    if (epoch && *epoch != now_j)
        *epoch = now_j;
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
BPF_ARRAY(denial_specs, struct denial_spec, DENIAL_NR);

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
    if (syscall >= DENIAL_NR)
        return 0;
    struct denial_spec *spec = denial_specs.lookup(&syscall);
    if (!spec)
        return 0;
    int kind = spec->kind;
    u32 err = (u32)-ret;
    u64 now_j = bpf_jiffies64();
    kptr_t task = K_TASK();
    struct denial_marks *marks = 0;
    u32 cause_flags = 0;
    u32 cap = denial_take_cause(task, syscall, now_j, &cause_flags, &marks);
    u64 cgroup_id = denial_cgroup(task);
    u32 source = DENIAL_SOURCE_SYSCALL;
    if (cap == DENIAL_CAUSE_SELINUX) {
        source = DENIAL_SOURCE_SELINUX;
    } else if (cap != DENIAL_NO_CAP) {
        source = DENIAL_SOURCE_CAPABILITY;
        struct denial_cap_key ckey = {
            .cgroup_id = cgroup_id,
            .cap = cap,
            .init_ns = cause_flags & DENIAL_FLAG_CAP_INIT_NS ? 1 : 0,
        };
        denial_count_cap(&ckey);
    }
#if DENIAL_SECCOMP_ERRNO
    if (source == DENIAL_SOURCE_SYSCALL &&
        (int)K_U32(task, OFF_TASK_SECCOMP_MODE) == DENIAL_SECCOMP_MODE_FILTER) {
        if (!marks)
            marks = denial_marks_of(task, 0);
        /* seccomp answers before sys_enter: no entry mark for this syscall means seccomp. */
        if (!marks || marks->entered != syscall + 1)
            source = DENIAL_SOURCE_SECCOMP;
        if (marks)
            marks->entered = 0;
    }
#endif
    denial_count(cgroup_id, syscall, err, source);
#if AUDITD_HAVE_TASK_PT_REGS
    u32 index = spec->index;
    const char *regs = auditd_regs();
    u64 arg = auditd_syscall_arg_of(regs, index), arg2 = auditd_syscall_arg_of(regs, index + 1);
#else
    u64 arg = 0, arg2 = 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 *saved = denial_pending.lookup(&tid);
    if (saved) {
        arg = *saved;
        denial_pending.delete(&tid);
    } else if (kind == DENIAL_TARGET_PATH) {
        kind = DENIAL_TARGET_NONE; /* entry not seen (map full, or attached mid-syscall) */
    }
#endif
    denial_emit(args, task, cgroup_id, now_j, syscall, err, source, cap, cause_flags, kind, arg,
                arg2);
    return 0;
}

/* Attached to sys_enter_<name> of the hooked syscalls only where needed: to mark entry for
 * tasks under a seccomp filter, and on kernels without the BTF task to save the target. */
int denial_enter_hook(struct denial_enter_args *args)
{
    u32 syscall = (u32)args->syscall_nr;
#if DENIAL_SECCOMP_ERRNO
    kptr_t task = K_TASK();
    if ((int)K_U32(task, OFF_TASK_SECCOMP_MODE) == DENIAL_SECCOMP_MODE_FILTER) {
        struct denial_marks *m = denial_marks_of(task, 1);
        if (m)
            m->entered = syscall + 1;
    }
#endif
#if !AUDITD_HAVE_TASK_PT_REGS
    u32 tid = (u32)bpf_get_current_pid_tgid();
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
static __always_inline void denial_cap_failed(u32 cap, u32 target_ns_inum)
{
    /* CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER: the kernel tries these after every
     * failed permission-bit check, so their failure is the DAC refusal itself, not a cause. */
    if (cap >= 1 && cap <= 3)
        return;
    long nr = auditd_current_syscall();
    if (nr < 0 || nr >= DENIAL_NR)
        return; /* not in a syscall: a kernel thread, or no BTF task to tell */
    u32 syscall = nr;
    u8 *hooked = denial_hooked.lookup(&syscall);
    if (!hooked || !*hooked)
        return;
    u32 flags = target_ns_inum == DENIAL_INIT_USER_NS_INUM ? DENIAL_FLAG_CAP_INIT_NS : 0;
    denial_set_cause(K_TASK(), syscall, cap, flags);
}

#if DENIAL_CAP_BTF
/* tp_btf/cap_capable (cred, target_ns, capable_ns, cap, ret): no trace record is built, and
 * the arguments are plain loads. */
int denial_cap_btf(u64 *ctx)
{
    u64 *args = ctx;
    asm volatile("" : "+r"(args)); /* BCC would turn loads through ctx into helper calls */
    if ((int)args[4] == 0)
        return 0;
    kptr_t target_ns = (kptr_t)args[1]; /* BTF-typed: a plain load */
    asm volatile("" : "+r"(target_ns));
    denial_cap_failed((u32)args[3], *(const u32 *)(target_ns + OFF_USER_NS_INUM));
    return 0;
}
#else
TRACEPOINT_PROBE(capability, cap_capable)
{
    if (args->ret == 0)
        return 0;
#if AUDITD_STRUCT_READS
    u32 inum = auditd_read_u32((void *)args->target_ns, OFF_USER_NS_INUM);
#else
    u32 inum = 0;
#endif
    denial_cap_failed(args->cap, inum);
    return 0;
}
#endif

#ifdef DENIAL_SELINUX
/* An enforced SELinux denial (an audited AVC decision) inside a hooked syscall: the cause of
 * the refusal that follows. Its rights and contexts come from the AVC audit record. */
TRACEPOINT_PROBE(avc, selinux_audited)
{
    if (args->denied == 0 || args->result == 0)
        return 0; /* allowed, or denied in permissive mode */
    long nr = auditd_current_syscall();
    if (nr < 0 || nr >= DENIAL_NR)
        return 0;
    u32 syscall = nr;
    u8 *hooked = denial_hooked.lookup(&syscall);
    if (!hooked || !*hooked)
        return 0;
    denial_set_cause(K_TASK(), syscall, DENIAL_CAUSE_SELINUX, 0);
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
    kptr_t task = K_TASK();
    u64 cgroup_id = denial_cgroup(task);
    denial_count(cgroup_id, syscall, DENIAL_ERR_KILLED, DENIAL_SOURCE_SECCOMP);
    denial_emit(args, task, cgroup_id, bpf_jiffies64(), syscall, DENIAL_ERR_KILLED,
                DENIAL_SOURCE_SECCOMP, DENIAL_NO_CAP, 0, DENIAL_TARGET_INT, (u64)args->errno, 0);
    return 0;
}
