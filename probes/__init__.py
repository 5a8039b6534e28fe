"""Kernel side of bpf-auditd: BPF C sources, and the thin Python that loads and decodes them."""
