"""Kernel side of bpf-auditd: BPF C sources and the thin Python that loads them and decodes their records."""
