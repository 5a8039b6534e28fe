/* advise.h — shared by advise_files.bpf.c and advise.bpf.c (the `advise` probes): parameters,
 * x86_64 syscall numbers, and reads of kernel memory and of the user register frame. No map
 * calls here: BCC rewrites those only in the main text.
 *
 * Parameters (-D): ADV_CAPS, ADV_SYSCALLS, ADV_FILES (0/1), OFF_PT_REGS_* from
 * auditd/kernel/offsets.py (without them nothing at sys_exit can be read: files are off).
 */
#ifndef AUDITD_ADVISE_H
#define AUDITD_ADVISE_H

#ifndef ADV_CAPS
#define ADV_CAPS 1
#endif
#ifndef ADV_SYSCALLS
#define ADV_SYSCALLS 1
#endif
#ifndef ADV_FILES
#define ADV_FILES 1
#endif

#ifndef OFF_PT_REGS_ORIG_AX
#undef ADV_FILES
#define ADV_FILES 0
#define ADV_EXIT 0
#else
#define ADV_EXIT 1
#endif

#define ADV_NR 512 /* syscall numbers counted: the x86_64 table ends below this */

/* x86_64 syscall numbers used by the probes (arch/x86/entry/syscalls/syscall_64.tbl). */
#define ADV_NR_CONNECT 42
#define ADV_NR_CLONE 56
#define ADV_NR_EXECVE 59
#define ADV_NR_UNSHARE 272
#define ADV_NR_SETNS 308
#define ADV_NR_EXECVEAT 322
#define ADV_NR_CLONE3 435

static __always_inline void *adv_ptr(const void *base, u64 off)
{
    void *value = 0;
    if (base)
        bpf_probe_read_kernel(&value, sizeof(value), (const char *)base + off);
    return value;
}

#if ADV_EXIT
static __always_inline u64 adv_reg(const void *regs, u32 offset)
{
    u64 value = 0;
    bpf_probe_read_kernel(&value, sizeof(value), (const char *)regs + offset);
    return value;
}

/* Syscall argument `index` (0-5) from the user register frame: still intact at sys_exit. */
static __always_inline u64 adv_arg(const void *regs, u32 index)
{
    switch (index) {
    case 0: return adv_reg(regs, OFF_PT_REGS_DI);
    case 1: return adv_reg(regs, OFF_PT_REGS_SI);
    case 2: return adv_reg(regs, OFF_PT_REGS_DX);
    case 3: return adv_reg(regs, OFF_PT_REGS_R10);
    case 4: return adv_reg(regs, OFF_PT_REGS_R8);
    case 5: return adv_reg(regs, OFF_PT_REGS_R9);
    }
    return 0;
}
#endif

#endif /* AUDITD_ADVISE_H */
