"""Kernel side of bpf-auditd: BPF C sources, and the thin Python that loads them and reads their
records and maps as raw values. A library: it imports nothing of `auditd` or `exporters`."""
