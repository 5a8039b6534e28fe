/* Least privilege from behaviour (`bpf-auditd advise`): what the advised cgroups use. Loaded
 * only while advising; the daemon never compiles this file.
 *
 *  - Capabilities (ADV_CAPS): raw tracepoint capability:cap_capable, successful checks only.
 *    The tracepoint does not say whether a check was a silent no-audit probe (the overcommit
 *    check every accountable mmap makes for CAP_SYS_ADMIN); the check's callers do. The kernel
 *    stack is taken from the top with bpf_get_stack and cap_capable's own frame is found by its
 *    address (ADV_CAP_START..ADV_CAP_END, from kallsyms): how many frames sit above it depends
 *    on how many programs are attached to the tracepoint (with two or more the call goes
 *    through __traceiter_cap_capable). The ADV_CALLERS return addresses below it are the key.
 *  - Syscalls (ADV_SYSCALLS): raw sys_enter counts every syscall per cgroup; raw sys_exit counts
 *    refusals (EPERM, EACCES) and namespaces created (unshare, clone, clone3) or joined (setns).
 *  - Files and TCP ports (ADV_FILES): advise_files.bpf.c, earlier in the same text; its
 *    functions are called from the two syscall programs here.
 *
 * Cgroups: adv_cgroups holds user space's decision per cgroup id. A cgroup never seen is taken
 * as ADV_PENDING (observed), so a service started while advising is observed from its first
 * syscall; user space decides within its poll interval and forgets what refused ones did.
 *
 * x86_64 only: syscall numbers are the x86_64 table's; 32-bit (ia32) syscalls of compat tasks
 * are counted apart (ADV_STAT_COMPAT) and not advised.
 *
 * Parameters (-D): ADV_CAP_START, ADV_CAP_END, ADV_CGROUPS, ADV_DATA_CGROUPS, ADV_CAP_ENTRIES,
 * ADV_OFF_THREAD_STATUS, ADV_HAVE_CREDS and ADV_OFF_*CRED* (auditd/kernel/fs_layout.py), plus
 * those of include/advise.h.
 */
#include "common.h"
#include "advise.h"

#ifndef ADV_CAP_START
#define ADV_CAP_START 0
#define ADV_CAP_END 0
#endif
#ifndef ADV_CGROUPS
#define ADV_CGROUPS 8192
#endif
#ifndef ADV_DATA_CGROUPS
#define ADV_DATA_CGROUPS 256
#endif
#ifndef ADV_CAP_ENTRIES
#define ADV_CAP_ENTRIES 8192
#endif

#define ADV_NS 8      /* enum auditd_ns_type (include/task.h) */
#define ADV_FRAMES 10 /* stack frames taken from the top for a capability check */
#define ADV_CALLERS 3 /* return addresses kept below cap_capable */

/* Cgroup decisions (mirrored by probes/advise.py). */
#define ADV_IGNORED 0
#define ADV_PENDING 1
#define ADV_ADVISED 2

/* adv_stats slots (mirrored by probes/advise.py, Stat). */
#define ADV_STAT_CGROUPS_FULL 0  /* a new cgroup found the decision map full: not observed */
#define ADV_STAT_STACK_FAILED 1  /* bpf_get_stack failed: check kept with unknown callers */
#define ADV_STAT_UNLOCATED 2     /* cap_capable not among the frames: callers unknown */
#define ADV_STAT_COMPAT 3        /* 32-bit syscalls of compat tasks: not advised */
#define ADV_STAT_CLONE3_UNREAD 4 /* clone3 whose struct clone_args could not be read */
#define ADV_STAT_KINDS 8

/* include/uapi/linux/sched.h */
#define ADV_CLONE_NEWNS 0x00020000ULL
#define ADV_CLONE_NEWPID 0x20000000ULL
#define ADV_CLONE_NEWNET 0x40000000ULL
#define ADV_CLONE_NEWUTS 0x04000000ULL
#define ADV_CLONE_NEWIPC 0x08000000ULL
#define ADV_CLONE_NEWUSER 0x10000000ULL
#define ADV_CLONE_NEWCGROUP 0x02000000ULL
#define ADV_CLONE_NEWTIME 0x00000080ULL
#define ADV_CSIGNAL 0xffULL

#define ADV_TS_COMPAT 0x0002 /* arch/x86/include/asm/thread_info.h: ia32 syscall active */

BPF_HASH(adv_cgroups, u64, u8, ADV_CGROUPS);
BPF_PERCPU_ARRAY(adv_drops, u64, AUDITD_DROP_KINDS);
BPF_PERCPU_ARRAY(adv_stats, u64, ADV_STAT_KINDS);

static __always_inline void adv_drop(u32 kind)
{
    u64 *n = adv_drops.lookup(&kind);
    if (n)
        (*n)++;
}

static __always_inline void adv_stat(u32 slot)
{
    u64 *n = adv_stats.lookup(&slot);
    if (n)
        (*n)++;
}

/* The last cgroup each CPU looked up, and the decision then: the same task makes many syscalls
 * in a row, so most lookups are two array reads instead of a hash lookup. User space bumps
 * adv_generation after changing decisions, which invalidates every CPU's entry. */
struct adv_last {
    u64 cgroup;
    u32 generation;
    u32 observed;
};
BPF_PERCPU_ARRAY(adv_last, struct adv_last, 1);
BPF_ARRAY(adv_generation, u32, 1);

static __always_inline int adv_decide(u64 cgroup)
{
    u8 *state = adv_cgroups.lookup(&cgroup);
    if (state)
        return *state != ADV_IGNORED;
    u8 pending = ADV_PENDING;
    if (adv_cgroups.insert(&cgroup, &pending) == 0)
        return 1;
    state = adv_cgroups.lookup(&cgroup); /* another CPU inserted it first */
    if (state)
        return *state != ADV_IGNORED;
    adv_stat(ADV_STAT_CGROUPS_FULL);
    return 0;
}

/* Whether a cgroup is observed: advised, or new and not decided yet. */
static __always_inline int adv_observed(u64 cgroup)
{
    u32 zero = 0;
    u32 *generation = adv_generation.lookup(&zero);
    struct adv_last *last = adv_last.lookup(&zero);
    if (!generation || !last)
        return adv_decide(cgroup);
    u32 now = *generation; /* read before the decision: a later bump refreshes it */
    if (last->cgroup == cgroup && last->generation == now)
        return last->observed;
    int observed = adv_decide(cgroup);
    last->cgroup = cgroup;
    last->generation = now;
    last->observed = observed;
    return observed;
}

#ifdef ADV_OFF_THREAD_STATUS
static __always_inline int adv_compat(void)
{
    u32 status = 0;
    bpf_probe_read_kernel(&status, sizeof(status),
                          (char *)bpf_get_current_task() + ADV_OFF_THREAD_STATUS);
    return (status & ADV_TS_COMPAT) != 0;
}
#else
static __always_inline int adv_compat(void) { return 0; }
#endif

/* -- capabilities ------------------------------------------------------------------------- */

#if ADV_CAPS
/* Read by probes/advise.py (CapKey, CapValue). */
struct adv_cap_key {
    u64 cgroup;
    u32 cap;
    u32 located; /* 1: caller[] are the frames below cap_capable; 0: unknown */
    u64 caller[ADV_CALLERS];
};

struct adv_cap_value {
    u64 count;
    u64 first_ns;
    u64 last_ns;
};

BPF_HASH(adv_caps, struct adv_cap_key, struct adv_cap_value, ADV_CAP_ENTRIES);

/* args: cred, target_ns, capable_ns, cap, ret (TP_PROTO of capability:cap_capable). */
int adv_cap(struct bpf_raw_tracepoint_args *ctx)
{
    if ((int)ctx->args[4] != 0) /* refused: the denial monitor's business */
        return 0;
    u64 cgroup = bpf_get_current_cgroup_id();
    if (!adv_observed(cgroup))
        return 0;
    struct adv_cap_key key = {.cgroup = cgroup, .cap = (u32)ctx->args[3]};
    u64 frames[ADV_FRAMES] = {};
    if (bpf_get_stack(ctx, frames, sizeof(frames), 0) < 0) {
        adv_stat(ADV_STAT_STACK_FAILED);
    } else {
        u32 found = 0;
#pragma unroll
        for (int i = 0; i < ADV_FRAMES; i++) {
            u64 frame = frames[i];
            if (found == 1)
                key.caller[0] = frame;
            else if (found == 2)
                key.caller[1] = frame;
            else if (found == 3)
                key.caller[2] = frame;
            if (found)
                found++;
            else if (frame >= ADV_CAP_START && frame < ADV_CAP_END)
                found = 1;
        }
        key.located = found > 1;
        if (!key.located)
            adv_stat(ADV_STAT_UNLOCATED);
    }
    u64 now = bpf_ktime_get_ns();
    struct adv_cap_value *seen = adv_caps.lookup(&key);
    if (seen) {
        __sync_fetch_and_add(&seen->count, 1);
        seen->last_ns = now;
        return 0;
    }
    struct adv_cap_value fresh = {.count = 1, .first_ns = now, .last_ns = now};
    if (adv_caps.insert(&key, &fresh) != 0) {
        seen = adv_caps.lookup(&key);
        if (seen)
            __sync_fetch_and_add(&seen->count, 1);
        else
            adv_drop(AUDITD_DROP_COUNTER_FULL);
    }
    return 0;
}
#endif

/* -- syscalls and namespaces -------------------------------------------------------------- */

#if ADV_SYSCALLS
/* Read by probes/advise.py (SyscallUse). */
struct adv_sys {
    u64 used[ADV_NR];
    u64 refused[ADV_NR];
    u64 ns_created[ADV_NS];
    u64 ns_joined[ADV_NS];
    u64 setns_any; /* setns(fd, 0): the type is the fd's, RestrictNamespaces= refuses it */
    u64 ambient;   /* ambient capabilities after successful execs, OR-ed (ADV_HAVE_CREDS) */
    u64 execs_root; /* successful execs ending as uid 0 */
    u64 execs_user; /* ... as another uid */
};

BPF_HASH(adv_syscalls, u64, struct adv_sys, ADV_DATA_CGROUPS);
BPF_ARRAY(adv_sys_zero, struct adv_sys, 1); /* the initial value: too big for the stack */

static __always_inline struct adv_sys *adv_sys_of(u64 cgroup)
{
    struct adv_sys *sys = adv_syscalls.lookup(&cgroup);
    if (sys)
        return sys;
    u32 zero = 0;
    struct adv_sys *fresh = adv_sys_zero.lookup(&zero);
    if (!fresh)
        return 0;
    adv_syscalls.insert(&cgroup, fresh);
    sys = adv_syscalls.lookup(&cgroup);
    if (!sys)
        adv_drop(AUDITD_DROP_COUNTER_FULL);
    return sys;
}

/* The credentials an exec ended with: root or not, and the ambient set (AmbientCapabilities=). */
static __always_inline void adv_note_creds(struct adv_sys *sys)
{
#ifdef ADV_HAVE_CREDS
    void *cred = adv_ptr((void *)bpf_get_current_task(), ADV_OFF_TASK_CRED);
    u32 uid = 1;
    u64 ambient = 0;
    if (cred) {
        bpf_probe_read_kernel(&uid, sizeof(uid), (char *)cred + ADV_OFF_CRED_UID);
        bpf_probe_read_kernel(&ambient, sizeof(ambient), (char *)cred + ADV_OFF_CRED_CAP_AMBIENT);
    }
    __sync_fetch_and_or(&sys->ambient, ambient);
    __sync_fetch_and_add(uid == 0 ? &sys->execs_root : &sys->execs_user, 1);
#endif
}

static __always_inline void adv_ns_bump(u64 *counts, u64 flags, u64 bit, int type)
{
    if ((flags & bit) && type >= 0 && type < ADV_NS)
        __sync_fetch_and_add(&counts[type], 1);
}

static __always_inline void adv_ns_count(u64 *counts, u64 flags)
{
    adv_ns_bump(counts, flags, ADV_CLONE_NEWNS, 0);
    adv_ns_bump(counts, flags, ADV_CLONE_NEWPID, 1);
    adv_ns_bump(counts, flags, ADV_CLONE_NEWNET, 2);
    adv_ns_bump(counts, flags, ADV_CLONE_NEWUTS, 3);
    adv_ns_bump(counts, flags, ADV_CLONE_NEWIPC, 4);
    adv_ns_bump(counts, flags, ADV_CLONE_NEWUSER, 5);
    adv_ns_bump(counts, flags, ADV_CLONE_NEWCGROUP, 6);
    adv_ns_bump(counts, flags, ADV_CLONE_NEWTIME, 7);
}
#endif

/* -- the two syscall programs -------------------------------------------------------------- */

int adv_enter(struct bpf_raw_tracepoint_args *ctx)
{
    u64 cgroup = bpf_get_current_cgroup_id();
    if (!adv_observed(cgroup))
        return 0;
    long nr = (long)ctx->args[1];
    if (adv_compat()) {
        adv_stat(ADV_STAT_COMPAT);
        return 0;
    }
#if ADV_SYSCALLS
    struct adv_sys *sys = adv_sys_of(cgroup);
    if (sys && nr >= 0 && nr < ADV_NR)
        __sync_fetch_and_add(&sys->used[nr], 1);
#endif
#if ADV_FILES
    if (nr == ADV_NR_EXECVE || nr == ADV_NR_EXECVEAT)
        adv_exec_enter((const void *)ctx->args[0], nr);
#endif
    return 0;
}

#if ADV_EXIT
int adv_exit(struct bpf_raw_tracepoint_args *ctx)
{
    u64 cgroup = bpf_get_current_cgroup_id();
    if (!adv_observed(cgroup) || adv_compat())
        return 0;
    const void *regs = (const void *)ctx->args[0];
    long ret = (long)ctx->args[1];
    long nr = (long)adv_reg(regs, OFF_PT_REGS_ORIG_AX);
    int refused = ret == -AUDITD_EPERM || ret == -AUDITD_EACCES;
    int ns = 0, exec = 0;
#if ADV_SYSCALLS
    ns = (ret == 0 && (nr == ADV_NR_UNSHARE || nr == ADV_NR_SETNS)) ||
         (ret > 0 && (nr == ADV_NR_CLONE || nr == ADV_NR_CLONE3));
    exec = ret == 0 && (nr == ADV_NR_EXECVE || nr == ADV_NR_EXECVEAT);
#endif
    int files = 0;
#if ADV_FILES
    files = adv_fs_hooked(nr);
#endif
    if (!refused && !ns && !files && !exec)
        return 0;
#if ADV_SYSCALLS
    struct adv_sys *sys = adv_sys_of(cgroup);
    if (sys && refused && nr >= 0 && nr < ADV_NR)
        __sync_fetch_and_add(&sys->refused[nr], 1);
    if (sys && exec)
        adv_note_creds(sys);
    if (sys && ns) {
        u64 arg0 = adv_reg(regs, OFF_PT_REGS_DI);
        if (nr == ADV_NR_UNSHARE) {
            adv_ns_count(sys->ns_created, arg0);
        } else if (nr == ADV_NR_CLONE) {
            adv_ns_count(sys->ns_created, arg0 & ~ADV_CSIGNAL);
        } else if (nr == ADV_NR_CLONE3) {
            u64 flags = 0; /* struct clone_args starts with its flags */
            if (bpf_probe_read_user(&flags, sizeof(flags), (void *)arg0) == 0)
                adv_ns_count(sys->ns_created, flags);
            else
                adv_stat(ADV_STAT_CLONE3_UNREAD);
        } else {
            u64 nstype = adv_reg(regs, OFF_PT_REGS_SI);
            if (nstype)
                adv_ns_count(sys->ns_joined, nstype);
            else
                __sync_fetch_and_add(&sys->setns_any, 1);
        }
    }
#endif
#if ADV_FILES
    if (files)
        adv_fs_exit(regs, nr, ret, cgroup);
#endif
    return 0;
}
#endif
