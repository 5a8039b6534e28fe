"""Outputs of bpf-auditd: Prometheus metrics and alert streams."""
