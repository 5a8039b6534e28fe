/* Allocations: kernel memory the kernel allocates on behalf of each cgroup (kmem tracepoints).
 *
 * Three tables, each paid for only as often as it must be (a hash-map update on every
 * allocation was measured at ~1.14x on a pipe-churn loop; an array index at ~1.02x):
 *
 *  alloc_slot_owner + alloc_slot_totals  exact totals per (cgroup, kind): a cgroup id hashes to
 *      a slot of a small table (a few linear probes, claimed once with compare-and-swap), and
 *      the per-CPU totals of that slot are incremented. Array lookups only, on every allocation.
 *      A cgroup that finds no slot is counted in the last slot (ALLOC_SLOTS): totals stay exact.
 *  alloc_sites  (cgroup, tgid, call site, kind) -> count and bytes, for 1 allocation in
 *      2^ALLOC_SITE_SHIFT chosen at random: where the kernel allocates, at a fraction of the cost.
 *  alloc_live   address -> (cgroup, call site, bytes), for addresses whose hash falls in 1 of
 *      2^ALLOC_LIVE_SHIFT buckets (only with ALLOC_TRACK_LIVE, which attaches the frees). Alloc and free of one address make the same choice, so a free
 *      that is not sampled costs a multiply and a compare, and outstanding bytes are estimated
 *      without bias by scaling the tracked bytes.
 *
 * Nothing is lost silently: a site or live entry that does not fit is counted in alloc_drops.
 * Parameters (-D): ALLOC_RAW, ALLOC_BTF, ALLOC_TRACK_LIVE, ALLOC_SLOT_BITS, ALLOC_SLOT_PROBES,
 * ALLOC_SITE_ENTRIES, ALLOC_SITE_SHIFT, ALLOC_LIVE_ENTRIES, ALLOC_LIVE_SHIFT, ALLOC_PAGE_SHIFT,
 * ALLOC_TYPE_LEN, OFF_KMEM_CACHE_{SIZE,OBJECT_SIZE,NAME} (raw only), plus common.h's and
 * task.h's.
 */
#include "common.h"
#include "task.h"

/* 1: raw tracepoints (BTF-checked prototypes, OFF_KMEM_CACHE_* from BTF); 0: classic ones. */
#ifndef ALLOC_RAW
#define ALLOC_RAW 0
#endif
/* With ALLOC_RAW: 1 when the same functions are loaded as tp_btf programs, whose pointer
 * arguments (the kmem_cache) and the current task (its cgroup) are read with plain loads the
 * verifier types from BTF, instead of helper calls. */
#ifndef ALLOC_BTF
#define ALLOC_BTF 0
#endif
#ifndef AUDITD_HAVE_CGROUP_LOADS
#define AUDITD_HAVE_CGROUP_LOADS 0
#endif
/* 1: track live objects (alloc_live) and attach the free tracepoints, which cost as much again
 * as the allocation ones; 0: totals and call sites only. */
#ifndef ALLOC_TRACK_LIVE
#define ALLOC_TRACK_LIVE 1
#endif
#ifndef ALLOC_SLOT_BITS
#define ALLOC_SLOT_BITS 10
#endif
#ifndef ALLOC_SLOT_PROBES
#define ALLOC_SLOT_PROBES 4
#endif
#ifndef ALLOC_SITE_ENTRIES
#define ALLOC_SITE_ENTRIES 16384
#endif
/* Attribute 1 allocation in 2^ALLOC_SITE_SHIFT to its call site. */
#ifndef ALLOC_SITE_SHIFT
#define ALLOC_SITE_SHIFT 6
#endif
#ifndef ALLOC_LIVE_ENTRIES
#define ALLOC_LIVE_ENTRIES 65536
#endif
/* Track addresses whose hash has its top ALLOC_LIVE_SHIFT bits zero: 1 in 2^shift. */
#ifndef ALLOC_LIVE_SHIFT
#define ALLOC_LIVE_SHIFT 4
#endif
#ifndef ALLOC_PAGE_SHIFT
#define ALLOC_PAGE_SHIFT 12
#endif
#ifndef ALLOC_TYPE_LEN
#define ALLOC_TYPE_LEN 32
#endif

#define ALLOC_SLOTS (1 << ALLOC_SLOT_BITS)
/* Fibonacci hashing: the top bits of id * 2^64/phi spread sequential ids (cgroup inode numbers,
 * slab addresses) evenly. */
#define ALLOC_HASH_MUL 0x9E3779B97F4A7C15ULL

enum alloc_kind {
    ALLOC_KIND_KMALLOC = 0,
    ALLOC_KIND_SLAB = 1, /* kmem_cache_alloc: an object of a named cache */
    ALLOC_KIND_PAGE = 2, /* the page allocator (also backs new slabs and large kmallocs) */
    ALLOC_KINDS = 3,
};

/* Decoded by probes/allocations.py (SlotTotals); the layout test keeps them in step. */
struct alloc_totals {
    u64 count[ALLOC_KINDS];
    u64 bytes_req[ALLOC_KINDS];
    u64 bytes_alloc[ALLOC_KINDS];
    /* Per-CPU pseudo-random state for site sampling: an LCG step is a multiply and an add,
     * cheaper than a helper call, and unlike a countdown it cannot fall in step with a
     * workload's own period. */
    u64 rng;
};

struct alloc_site_key {
    u64 cgroup_id;
    u64 call_site; /* 0 for pages: mm_page_alloc carries no caller */
    u32 tgid;
    u32 kind;
};

struct alloc_site_value {
    u64 count;
    u64 bytes_req;
    u64 bytes_alloc;
    char type[ALLOC_TYPE_LEN]; /* slab cache name (kmem_cache_alloc only), set on insert */
};

struct alloc_live_value {
    u64 cgroup_id;
    u64 call_site;
    u64 bytes;
    u32 tgid;
    u32 kind;
};

/* 0 = free; otherwise the cgroup id that claimed the slot. User space frees slots of removed
 * cgroups (after folding their totals) by zeroing the totals first and the owner last. A task
 * of a removed cgroup still exiting could add to a slot in that instant; housekeeping retires a
 * cgroup only seconds after it is gone, long after its last task has exited. */
BPF_ARRAY(alloc_slot_owner, u64, ALLOC_SLOTS);
BPF_PERCPU_ARRAY(alloc_slot_totals, struct alloc_totals, ALLOC_SLOTS + 1);
BPF_PERCPU_HASH(alloc_sites, struct alloc_site_key, struct alloc_site_value, ALLOC_SITE_ENTRIES);
/* Keyed by object address (slab) or, for pages, the struct page address (raw tracepoints) or
 * frame number (classic ones): they never overlap (direct map, vmemmap and frame numbers are
 * disjoint ranges). */
BPF_HASH(alloc_live, u64, struct alloc_live_value, ALLOC_LIVE_ENTRIES);
BPF_PERCPU_ARRAY(alloc_drops, u64, AUDITD_DROP_KINDS);

static __always_inline void alloc_drop(u32 kind)
{
    u64 *n = alloc_drops.lookup(&kind);
    if (n)
        (*n)++;
}

/* The slot holding this cgroup's totals, claiming a free one on first sight. */
static __always_inline u32 alloc_slot_of(u64 cgroup_id)
{
    /* 0 marks a free slot: an unknown cgroup (no cgroup v2) can own none. */
    if (cgroup_id == 0)
        return ALLOC_SLOTS;
    u32 start = (u32)((cgroup_id * ALLOC_HASH_MUL) >> (64 - ALLOC_SLOT_BITS));

#pragma unroll
    for (int i = 0; i < ALLOC_SLOT_PROBES; i++) {
        u32 at = (start + i) & (ALLOC_SLOTS - 1);
        u64 *owner = alloc_slot_owner.lookup(&at);
        if (!owner)
            break;
        u64 seen = *owner;
        if (seen == cgroup_id)
            return at;
        if (seen == 0) {
            /* Two CPUs may race for a free slot: only one claim wins, the other probes on. */
            seen = __sync_val_compare_and_swap(owner, 0, cgroup_id);
            if (seen == 0 || seen == cgroup_id)
                return at;
        }
    }
    alloc_drop(AUDITD_DROP_COUNTER_FULL);
    return ALLOC_SLOTS;
}

static __always_inline int alloc_live_sampled(u64 addr)
{
#if ALLOC_LIVE_SHIFT == 0
    return 1;
#else
    return ((addr * ALLOC_HASH_MUL) >> (64 - ALLOC_LIVE_SHIFT)) == 0;
#endif
}

/* `type`: the slab cache's name (classic tracepoints) or its struct kmem_cache (raw), or 0. */
static __always_inline void alloc_site(u64 cgroup_id, u32 kind, u64 call_site, u64 req,
                                       u64 bytes, const void *type)
{
    struct alloc_site_key key = {
        .cgroup_id = cgroup_id,
        .call_site = call_site,
        .tgid = bpf_get_current_pid_tgid() >> 32,
        .kind = kind,
    };
    struct alloc_site_value *v = alloc_sites.lookup(&key);
    if (!v) {
        struct alloc_site_value fresh = {};
        if (type) {
#if ALLOC_RAW
            /* `type` is the struct kmem_cache: its name is a pointer inside it. */
            const char *name = 0;
            bpf_probe_read_kernel(&name, sizeof(name), (const char *)type + OFF_KMEM_CACHE_NAME);
            type = name;
#endif
            if (type)
                bpf_probe_read_kernel_str(fresh.type, sizeof(fresh.type), type);
        }
        /* BPF_NOEXIST: another CPU inserting the same key first is not an overflow. */
        if (alloc_sites.insert(&key, &fresh) != 0 && !alloc_sites.lookup(&key)) {
            alloc_drop(AUDITD_DROP_SITE_FULL);
            return;
        }
        v = alloc_sites.lookup(&key);
        if (!v)
            return;
    }
    v->count++;
    v->bytes_req += req;
    v->bytes_alloc += bytes;
}

/* The current cgroup's id: task->cgroups->dfl_cgrp->kn->id with typed loads (~3 ns) where
 * they are allowed, else the helper (~25 ns), which reads the same. */
static __always_inline u64 alloc_cgroup_id(void)
{
#if ALLOC_BTF && AUDITD_BTF_LOADS && AUDITD_HAVE_CGROUP_LOADS
    kptr_t task = K_TASK();
    kptr_t cgroup = K_PTR(K_PTR(task, OFF_TASK_CGROUPS), OFF_CSS_SET_DFL_CGRP);
    return K_U64(K_PTR(cgroup, OFF_CGROUP_KN), OFF_KERNFS_NODE_ID);
#else
    return bpf_get_current_cgroup_id();
#endif
}

static __always_inline void alloc_account(u32 kind, u64 call_site, u64 addr, u64 req, u64 bytes,
                                          const void *type)
{
    u64 cgroup_id = alloc_cgroup_id();
    u32 slot = alloc_slot_of(cgroup_id);
    struct alloc_totals *t = alloc_slot_totals.lookup(&slot);
    if (!t)
        return; /* cannot happen: slot < ALLOC_SLOTS + 1 */
    t->count[kind]++;
    t->bytes_req[kind] += req;
    t->bytes_alloc[kind] += bytes;
#if ALLOC_SITE_SHIFT > 0
    t->rng = t->rng * 6364136223846793005ULL + 1442695040888963407ULL;
    if ((t->rng >> (64 - ALLOC_SITE_SHIFT)) == 0)
#endif
        alloc_site(cgroup_id, kind, call_site, req, bytes, type);

#if ALLOC_TRACK_LIVE
    if (alloc_live_sampled(addr)) {
        struct alloc_live_value live = {
            .cgroup_id = cgroup_id,
            .call_site = call_site,
            .bytes = bytes,
            .tgid = bpf_get_current_pid_tgid() >> 32,
            .kind = kind,
        };
        /* An address reused without a traced free (bulk frees have no tracepoint) simply
         * replaces its stale entry. */
        if (alloc_live.update(&addr, &live) != 0)
            alloc_drop(AUDITD_DROP_LIVE_FULL);
    }
#endif
}

static __always_inline void alloc_release(u64 addr)
{
    if (alloc_live_sampled(addr))
        alloc_live.delete(&addr);
}

#if ALLOC_RAW
/* Raw tracepoints: the arguments as the kernel passes them (checked against BTF's btf_trace_*
 * prototypes by probes/allocations.py before this is chosen), without building the trace
 * record first: measured at a fraction of a classic tracepoint's cost per call. User space
 * attaches these functions as raw or (ALLOC_BTF) tp_btf programs: both see the arguments as an
 * array of u64. */

/* struct kmem_cache's size (allocated) and object_size (requested). */
static __always_inline void alloc_cache_sizes(const void *cache, u64 *req, u64 *bytes)
{
#if ALLOC_BTF
    /* `cache` is a BTF pointer: plain loads. The empty asm hides that it comes from ctx from
     * BCC, which would otherwise turn the loads into bpf_probe_read calls; two 4-byte loads, as
     * the verifier refuses one spanning two members. */
    u64 c = (u64)cache;
    asm volatile("" : "+r"(c));
    *bytes = *(const u32 *)((const char *)c + OFF_KMEM_CACHE_SIZE);
    *req = *(const u32 *)((const char *)c + OFF_KMEM_CACHE_OBJECT_SIZE);
#elif OFF_KMEM_CACHE_OBJECT_SIZE == OFF_KMEM_CACHE_SIZE + 4
    /* One read when adjacent (as on every kernel since 4.x; little-endian): each
     * bpf_probe_read_kernel is a helper call. */
    u64 both = 0;
    bpf_probe_read_kernel(&both, sizeof(both), (const char *)cache + OFF_KMEM_CACHE_SIZE);
    *bytes = (u32)both;
    *req = both >> 32;
#else
    u32 size = 0, object_size = 0;
    bpf_probe_read_kernel(&size, sizeof(size), (const char *)cache + OFF_KMEM_CACHE_SIZE);
    bpf_probe_read_kernel(&object_size, sizeof(object_size),
                          (const char *)cache + OFF_KMEM_CACHE_OBJECT_SIZE);
    *bytes = size;
    *req = object_size;
#endif
}

int alloc_raw_kmalloc(struct bpf_raw_tracepoint_args *ctx)
{
    /* (call_site, ptr, bytes_req, bytes_alloc, gfp_flags, node) */
    u64 ptr = ctx->args[1];
    if (!ptr)
        return 0; /* failed allocation: nothing was allocated */
    alloc_account(ALLOC_KIND_KMALLOC, ctx->args[0], ptr, ctx->args[2], ctx->args[3], 0);
    return 0;
}

int alloc_raw_kmem_cache_alloc(struct bpf_raw_tracepoint_args *ctx)
{
    /* (call_site, ptr, struct kmem_cache *s, gfp_flags, node) */
    u64 ptr = ctx->args[1];
    const void *cache = (const void *)ctx->args[2];
    if (!ptr)
        return 0;
    u64 req = 0, bytes = 0;
    alloc_cache_sizes(cache, &req, &bytes);
    alloc_account(ALLOC_KIND_SLAB, ctx->args[0], ptr, req, bytes, cache);
    return 0;
}

int alloc_raw_mm_page_alloc(struct bpf_raw_tracepoint_args *ctx)
{
    /* (struct page *page, order, gfp_flags, migratetype); the page pointer is the key, as in
     * mm_page_free. */
    u64 page = ctx->args[0];
    if (!page)
        return 0;
    u64 bytes = (u64)1 << (ALLOC_PAGE_SHIFT + (ctx->args[1] & 31));
    alloc_account(ALLOC_KIND_PAGE, 0, page, bytes, bytes, 0);
    return 0;
}

#if ALLOC_TRACK_LIVE
int alloc_raw_kfree(struct bpf_raw_tracepoint_args *ctx)
{
    alloc_release(ctx->args[1]);
    return 0;
}

int alloc_raw_kmem_cache_free(struct bpf_raw_tracepoint_args *ctx)
{
    alloc_release(ctx->args[1]);
    return 0;
}

int alloc_raw_mm_page_free(struct bpf_raw_tracepoint_args *ctx)
{
    alloc_release(ctx->args[0]);
    return 0;
}

/* Pages freed in batches (page cache reclaim, folio batches) skip mm_page_free. */
int alloc_raw_mm_page_free_batched(struct bpf_raw_tracepoint_args *ctx)
{
    alloc_release(ctx->args[0]);
    return 0;
}
#endif /* ALLOC_TRACK_LIVE */

#else /* classic tracepoints: the record layout comes from tracefs, right on any kernel */

TRACEPOINT_PROBE(kmem, kmalloc)
{
    u64 ptr = (u64)args->ptr;
    if (!ptr)
        return 0;
    alloc_account(ALLOC_KIND_KMALLOC, args->call_site, ptr, args->bytes_req, args->bytes_alloc,
                  0);
    return 0;
}

TRACEPOINT_PROBE(kmem, kmem_cache_alloc)
{
    u64 ptr = (u64)args->ptr;
    if (!ptr)
        return 0;
    /* The record carries the cache's name inline (__data_loc): no struct read needed. */
    const char *name = (const char *)args + (args->data_loc_name & 0xFFFF);
    alloc_account(ALLOC_KIND_SLAB, args->call_site, ptr, args->bytes_req, args->bytes_alloc,
                  name);
    return 0;
}

TRACEPOINT_PROBE(kmem, mm_page_alloc)
{
    u64 pfn = args->pfn;
    if (pfn == (u64)-1)
        return 0;
    u64 bytes = (u64)1 << (ALLOC_PAGE_SHIFT + (args->order & 31));
    alloc_account(ALLOC_KIND_PAGE, 0, pfn, bytes, bytes, 0);
    return 0;
}

#if ALLOC_TRACK_LIVE
TRACEPOINT_PROBE(kmem, kfree)
{
    alloc_release((u64)args->ptr);
    return 0;
}

TRACEPOINT_PROBE(kmem, kmem_cache_free)
{
    alloc_release((u64)args->ptr);
    return 0;
}

TRACEPOINT_PROBE(kmem, mm_page_free)
{
    alloc_release(args->pfn);
    return 0;
}

TRACEPOINT_PROBE(kmem, mm_page_free_batched)
{
    alloc_release(args->pfn);
    return 0;
}
#endif /* ALLOC_TRACK_LIVE */

#endif /* ALLOC_RAW */
