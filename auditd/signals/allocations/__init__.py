"""Allocations: kernel memory allocated on behalf of each service (kmalloc, slab caches, pages),
exact totals from the kernel's slot table, sampled call sites, estimated outstanding bytes."""
