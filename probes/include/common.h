/* Shared by every probe: loss accounting and reading syscall arguments at exit.
 *
 * Compile-time parameters arrive as -D flags from probes/runtime.py:
 *   RINGBUF_PAGES            pages per ring buffer (power of two)
 *   AUDITD_HAVE_TASK_PT_REGS 1 when bpf_task_pt_regs() on the BTF task is usable (needs BTF)
 *   OFF_PT_REGS_{DI,SI,DX,R10,R8,R9} user register offsets in struct pt_regs, from BTF
 */
#ifndef AUDITD_COMMON_H
#define AUDITD_COMMON_H

#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 64
#endif
#ifndef AUDITD_HAVE_TASK_PT_REGS
#define AUDITD_HAVE_TASK_PT_REGS 0
#endif

/* Where a probe can lose data; each probe keeps a per-CPU array indexed by these (BCC refuses
 * map calls inside macros, so each probe has its own small counting function). The Python side
 * (probes/runtime.py, DropKind) mirrors the numbering. */
enum auditd_drop_kind {
    AUDITD_DROP_RINGBUF = 0,      /* ring buffer full: record not sent */
    AUDITD_DROP_COUNTER_FULL = 1, /* counter map full: event counted only in the overflow slot */
    AUDITD_DROP_PENDING_FULL = 2, /* per-thread entry map full: syscall argument not kept */
    AUDITD_DROP_SITE_FULL = 3,    /* call-site map full: a sample not attributed to its site */
    AUDITD_DROP_LIVE_FULL = 4,    /* live-object map full: an allocation not tracked as live */
    AUDITD_DROP_KINDS = 8,
};

#define AUDITD_EACCES 13
#define AUDITD_EPERM 1

static __always_inline int auditd_is_refusal(long ret)
{
    return ret == -AUDITD_EACCES || ret == -AUDITD_EPERM;
}

#ifndef AUDITD_BTF_LOADS
#define AUDITD_BTF_LOADS 0
#endif

#if AUDITD_HAVE_TASK_PT_REGS
/* The user register frame of the current task (struct pt_regs, BTF-typed). */
static __always_inline const char *auditd_regs(void)
{
    return (const char *)bpf_task_pt_regs((struct task_struct *)bpf_get_current_task_btf());
}

static __always_inline u64 auditd_reg(const char *regs, u32 offset)
{
#if AUDITD_BTF_LOADS
    return *(const u64 *)(regs + offset); /* a plain load the verifier checks */
#else
    u64 value = 0;
    bpf_probe_read_kernel(&value, sizeof(value), regs + offset);
    return value;
#endif
}

/* The syscall's own arguments are still in the user register frame at sys_exit: reading them
 * there costs nothing for the syscalls that succeed, unlike saving every argument at entry. */
static __always_inline u64 auditd_syscall_arg_of(const char *regs, int index)
{
    switch (index) {
    case 0: return auditd_reg(regs, OFF_PT_REGS_DI);
    case 1: return auditd_reg(regs, OFF_PT_REGS_SI);
    case 2: return auditd_reg(regs, OFF_PT_REGS_DX);
    case 3: return auditd_reg(regs, OFF_PT_REGS_R10);
    case 4: return auditd_reg(regs, OFF_PT_REGS_R8);
    case 5: return auditd_reg(regs, OFF_PT_REGS_R9);
    }
    return 0;
}

static __always_inline u64 auditd_syscall_arg(int index)
{
    return auditd_syscall_arg_of(auditd_regs(), index);
}

/* The number of the syscall the current task is in (-1 outside one), for hooks that are not
 * syscall tracepoints: capability checks, signal generation. */
static __always_inline long auditd_current_syscall(void)
{
    return (long)auditd_reg(auditd_regs(), OFF_PT_REGS_ORIG_AX);
}
#else
static __always_inline long auditd_current_syscall(void) { return -1; }
#endif

#endif /* AUDITD_COMMON_H */
