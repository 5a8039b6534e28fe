"""Outputs of bpf-auditd: Prometheus metrics and alert streams.

A library the daemon composes: it takes metric families (`families.Family`) and alert documents
(`sink.Publishable`) and knows nothing else of the daemon (it imports no `auditd` or `probes`
module; tests/test_architecture.py holds it to that).
"""
