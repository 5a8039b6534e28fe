/* task.h — read task_struct and namespace fields without trusting header layouts.
 *
 * The headers BCC compiles against may belong to another kernel (on our 6.18 hosts they are
 * Debian's 6.1: task_struct.nsproxy sits at 3064 there and at 1840 in the running kernel), so a
 * plain `task->nsproxy` silently reads the wrong word. Instead every field is read with
 * bpf_probe_read_kernel at `pointer + OFF_*`, and the OFF_* constants come from
 * auditd/kernel/offsets.py as -D cflags:
 *
 *   AUDITD_STRUCT_READS=1 + OFF_*=N     offsets from the running kernel's BTF; no kernel
 *                                       header is included, so tracepoint-only programs
 *                                       stay cheap to compile.
 *   AUDITD_STRUCT_READS=1 +
 *   AUDITD_OFFSETS_FROM_HEADERS         the headers are the running kernel's own (LinuxKit's
 *                                       kernel-bcc images): offsets come from offsetof().
 *   AUDITD_STRUCT_READS=0               no trustworthy layout: every helper returns 0, and
 *                                       the daemon reports why instead of guessing.
 *
 * Every helper returns 0 when a read fails (NULL pointer, exiting task), so 0 means "unknown".
 */
#ifndef AUDITD_TASK_H
#define AUDITD_TASK_H

/* Fail the build rather than read garbage when a probe is compiled without the plan's cflags. */
#ifndef AUDITD_STRUCT_READS
#error "AUDITD_STRUCT_READS is not defined: compile with the cflags of auditd.offsets.resolve()"
#endif

enum auditd_ns_type {
    AUDITD_NS_MNT = 0,
    AUDITD_NS_PID,
    AUDITD_NS_NET,
    AUDITD_NS_UTS,
    AUDITD_NS_IPC,
    AUDITD_NS_USER,
    AUDITD_NS_CGROUP,
    AUDITD_NS_TIME,
    AUDITD_NS_COUNT,
};

#if AUDITD_STRUCT_READS && defined(AUDITD_OFFSETS_FROM_HEADERS)
#include <linux/sched.h>
#include <linux/cred.h>
#include <linux/nsproxy.h>
#include <linux/pid.h>
#include <linux/pid_namespace.h>
#include <linux/user_namespace.h>
#include <linux/utsname.h>
#include <linux/ipc_namespace.h>
#include <linux/time_namespace.h>
#include <linux/cgroup.h>
#include <linux/fs.h>
#include <linux/fdtable.h>
#include <net/net_namespace.h>

#define OFF_TASK_TGID offsetof(struct task_struct, tgid)
#define OFF_TASK_PID offsetof(struct task_struct, pid)
#define OFF_TASK_REAL_PARENT offsetof(struct task_struct, real_parent)
#define OFF_TASK_REAL_CRED offsetof(struct task_struct, real_cred)
#define OFF_TASK_NSPROXY offsetof(struct task_struct, nsproxy)
#define OFF_TASK_THREAD_PID offsetof(struct task_struct, thread_pid)
#define OFF_TASK_GROUP_LEADER offsetof(struct task_struct, group_leader)
#define OFF_TASK_START_TIME offsetof(struct task_struct, start_time)
#define OFF_TASK_COMM offsetof(struct task_struct, comm)
#define OFF_CRED_UID offsetof(struct cred, uid.val)
#define OFF_CRED_USER_NS offsetof(struct cred, user_ns)
#define OFF_NSPROXY_UTS_NS offsetof(struct nsproxy, uts_ns)
#define OFF_NSPROXY_IPC_NS offsetof(struct nsproxy, ipc_ns)
#define OFF_NSPROXY_MNT_NS offsetof(struct nsproxy, mnt_ns)
#define OFF_NSPROXY_PID_NS_FOR_CHILDREN offsetof(struct nsproxy, pid_ns_for_children)
#define OFF_NSPROXY_NET_NS offsetof(struct nsproxy, net_ns)
#define OFF_NSPROXY_TIME_NS offsetof(struct nsproxy, time_ns)
#define OFF_NSPROXY_TIME_NS_FOR_CHILDREN offsetof(struct nsproxy, time_ns_for_children)
#define OFF_NSPROXY_CGROUP_NS offsetof(struct nsproxy, cgroup_ns)
#define OFF_PID_LEVEL offsetof(struct pid, level)
#define OFF_PID_NUMBERS offsetof(struct pid, numbers)
#define OFF_UPID_NS offsetof(struct upid, ns)
#define SIZEOF_UPID sizeof(struct upid)
#define OFF_UTS_NS_INUM offsetof(struct uts_namespace, ns.inum)
#define OFF_IPC_NS_INUM offsetof(struct ipc_namespace, ns.inum)
#define OFF_PID_NS_INUM offsetof(struct pid_namespace, ns.inum)
#define OFF_NET_NS_INUM offsetof(struct net, ns.inum)
#define OFF_TIME_NS_INUM offsetof(struct time_namespace, ns.inum)
#define OFF_CGROUP_NS_INUM offsetof(struct cgroup_namespace, ns.inum)
#define OFF_USER_NS_INUM offsetof(struct user_namespace, ns.inum)
/* The file behind a descriptor (auditd/kernel/offsets.py OPTIONAL, switch AUDITD_HAVE_FILE_READS). */
#define OFF_TASK_FILES offsetof(struct task_struct, files)
#define OFF_FILES_FDT offsetof(struct files_struct, fdt)
#define OFF_FDTABLE_MAX_FDS offsetof(struct fdtable, max_fds)
#define OFF_FDTABLE_FD offsetof(struct fdtable, fd)
#define OFF_FILE_INODE offsetof(struct file, f_inode)
#define OFF_INODE_INO offsetof(struct inode, i_ino)
#define OFF_INODE_SB offsetof(struct inode, i_sb)
#define OFF_SB_MAGIC offsetof(struct super_block, s_magic)
#define AUDITD_HAVE_FILE_READS 1
/* struct mnt_namespace lives in fs/mount.h, which no headers package ships: OFF_MNT_NS_INUM
 * stays undefined (mount namespace reads 0) unless the build passes it explicitly. */
#endif

#if AUDITD_STRUCT_READS

/* No branch on the outcome: the helper zeroes what it cannot read (a NULL base + off is below
 * the kernel's addresses, so it fails), and a branch per read would split the verifier's view
 * of a program in two at every read (ns_exit_setns took 0.37 s to verify that way). */
static __always_inline void *auditd_read_ptr(const void *base, u64 off)
{
    void *value = 0;

    bpf_probe_read_kernel(&value, sizeof(value), (const char *)base + off);
    return value;
}

static __always_inline u32 auditd_read_u32(const void *base, u64 off)
{
    u32 value = 0;

    bpf_probe_read_kernel(&value, sizeof(value), (const char *)base + off);
    return value;
}

static __always_inline u64 auditd_read_u64(const void *base, u64 off)
{
    u64 value = 0;

    bpf_probe_read_kernel(&value, sizeof(value), (const char *)base + off);
    return value;
}

/* The namespace the task is *in* for pid: thread_pid->numbers[thread_pid->level].ns, which is
 * what /proc/PID/ns/pid shows (nsproxy->pid_ns_for_children is where its children will go). */
static __always_inline void *auditd_task_active_pid_ns(void *task)
{
    void *pid = auditd_read_ptr(task, OFF_TASK_THREAD_PID);
    u32 level = 0;

    /* A failed read of level must not pass for level 0 (the initial namespace). */
    if (!pid || bpf_probe_read_kernel(&level, sizeof(level), (const char *)pid + OFF_PID_LEVEL))
        return 0;
    /* Nesting is capped at 32 by the kernel (MAX_PID_NS_LEVEL); anything above is a bad read. */
    if (level > 32)
        return 0;
    return auditd_read_ptr(pid, OFF_PID_NUMBERS + (u64)level * SIZEOF_UPID + OFF_UPID_NS);
}

/* Inode number of the task's namespace of `type` (as /proc/PID/ns/<type> shows), 0 if unknown. */
static __always_inline u32 auditd_task_ns_inum(void *task, int type)
{
    void *nsproxy;

    if (type == AUDITD_NS_PID)
        return auditd_read_u32(auditd_task_active_pid_ns(task), OFF_PID_NS_INUM);
    if (type == AUDITD_NS_USER) {
        /* /proc shows the user namespace of the objective (real) credentials. */
        void *cred = auditd_read_ptr(task, OFF_TASK_REAL_CRED);

        return auditd_read_u32(auditd_read_ptr(cred, OFF_CRED_USER_NS), OFF_USER_NS_INUM);
    }
    /* NULL once the task has exited its namespaces; the reads below then return 0. */
    nsproxy = auditd_read_ptr(task, OFF_TASK_NSPROXY);
    switch (type) {
    case AUDITD_NS_MNT:
#ifdef OFF_MNT_NS_INUM
        return auditd_read_u32(auditd_read_ptr(nsproxy, OFF_NSPROXY_MNT_NS), OFF_MNT_NS_INUM);
#else
        return 0;
#endif
    case AUDITD_NS_NET:
        return auditd_read_u32(auditd_read_ptr(nsproxy, OFF_NSPROXY_NET_NS), OFF_NET_NS_INUM);
    case AUDITD_NS_UTS:
        return auditd_read_u32(auditd_read_ptr(nsproxy, OFF_NSPROXY_UTS_NS), OFF_UTS_NS_INUM);
    case AUDITD_NS_IPC:
        return auditd_read_u32(auditd_read_ptr(nsproxy, OFF_NSPROXY_IPC_NS), OFF_IPC_NS_INUM);
    case AUDITD_NS_CGROUP:
        return auditd_read_u32(auditd_read_ptr(nsproxy, OFF_NSPROXY_CGROUP_NS), OFF_CGROUP_NS_INUM);
    case AUDITD_NS_TIME:
        return auditd_read_u32(auditd_read_ptr(nsproxy, OFF_NSPROXY_TIME_NS), OFF_TIME_NS_INUM);
    }
    return 0;
}

/* Thread-group id (the process id) as seen from the initial pid namespace. */
static __always_inline u32 auditd_task_tgid(void *task)
{
    return auditd_read_u32(task, OFF_TASK_TGID);
}

/* Parent's tgid (real_parent, i.e. not a ptracer), as seen from the initial pid namespace. */
static __always_inline u32 auditd_task_ppid(void *task)
{
    return auditd_read_u32(auditd_read_ptr(task, OFF_TASK_REAL_PARENT), OFF_TASK_TGID);
}

/* Real uid (kuid, as seen from the initial user namespace) of the objective credentials. */
static __always_inline u32 auditd_task_uid(void *task)
{
    return auditd_read_u32(auditd_read_ptr(task, OFF_TASK_REAL_CRED), OFF_CRED_UID);
}

#else /* !AUDITD_STRUCT_READS: same API, no reads, so probes need no #ifdefs of their own. */

static __always_inline u32 auditd_task_ns_inum(void *task, int type) { return 0; }
static __always_inline u32 auditd_task_tgid(void *task) { return 0; }
static __always_inline u32 auditd_task_ppid(void *task) { return 0; }
static __always_inline u32 auditd_task_uid(void *task) { return 0; }

#endif /* AUDITD_STRUCT_READS */

/* Reading the current task for the hot paths: plain loads on BTF-typed pointers, which the
 * verifier checks against the running kernel's BTF and turns into faulting loads (~0 ns each;
 * AUDITD_BTF_LOADS: BTF offsets and a kernel that allows such loads in tracepoint programs),
 * else bpf_probe_read_kernel at the same offsets (~30 ns each), else nothing (no layouts).
 * A NULL or unreadable pointer reads as 0 in every mode. */
#ifndef AUDITD_BTF_LOADS
#define AUDITD_BTF_LOADS 0
#endif
typedef const char *kptr_t;
#if AUDITD_BTF_LOADS
#define K_TASK() ((kptr_t)bpf_get_current_task_btf())
#define K_PTR(base, off) (*(kptr_t *)((base) + (off)))
#define K_U32(base, off) (*(const u32 *)((base) + (off)))
#define K_U64(base, off) (*(const u64 *)((base) + (off)))
#elif AUDITD_STRUCT_READS
#define K_TASK() ((kptr_t)bpf_get_current_task())
#define K_PTR(base, off) ((kptr_t)auditd_read_ptr(base, off))
#define K_U32(base, off) auditd_read_u32(base, off)
#define K_U64(base, off) auditd_read_u64(base, off)
#else
#define K_TASK() ((kptr_t)bpf_get_current_task())
#define K_PTR(base, off) ((kptr_t)0)
#define K_U32(base, off) ((u32)0)
#define K_U64(base, off) ((u64)0)
#endif

/* When the current process started (its leader's start_time, ns since boot; 0 unknown): with
 * the pid, a process's identity within any dedup window (pids are reused). */
static __always_inline u64 auditd_process_start(kptr_t task)
{
#if AUDITD_STRUCT_READS
    return K_U64(K_PTR(task, OFF_TASK_GROUP_LEADER), OFF_TASK_START_TIME);
#else
    return 0;
#endif
}
#endif /* AUDITD_TASK_H */
