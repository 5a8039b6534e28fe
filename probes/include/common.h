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

#if AUDITD_HAVE_TASK_PT_REGS
/* The syscall's own arguments are still in the user register frame at sys_exit: reading them
 * there costs nothing for the syscalls that succeed, unlike saving every argument at entry. */
static __always_inline u64 auditd_syscall_arg(int index)
{
    u32 offset;
    switch (index) {
    case 0: offset = OFF_PT_REGS_DI; break;
    case 1: offset = OFF_PT_REGS_SI; break;
    case 2: offset = OFF_PT_REGS_DX; break;
    case 3: offset = OFF_PT_REGS_R10; break;
    case 4: offset = OFF_PT_REGS_R8; break;
    case 5: offset = OFF_PT_REGS_R9; break;
    default: return 0;
    }
    u64 value = 0;
    void *regs = (void *)bpf_task_pt_regs((struct task_struct *)bpf_get_current_task_btf());
    bpf_probe_read_kernel(&value, sizeof(value), regs + offset);
    return value;
}

/* The number of the syscall the current task is in (-1 outside one), for hooks that are not
 * syscall tracepoints: capability checks, signal generation. */
static __always_inline long auditd_current_syscall(void)
{
    long nr = -1;
    void *regs = (void *)bpf_task_pt_regs((struct task_struct *)bpf_get_current_task_btf());
    bpf_probe_read_kernel(&nr, sizeof(nr), regs + OFF_PT_REGS_ORIG_AX);
    return nr;
}
#else
static __always_inline long auditd_current_syscall(void) { return -1; }
#endif

#endif /* AUDITD_COMMON_H */
