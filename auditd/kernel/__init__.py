"""Kernel access: what the running kernel says about itself (BTF and struct offsets, tracefs,
cgroups, symbols, what BPF program types load) and the daemon's own privileges. No events here:
plain facts for the signals above and for `doctor`."""
