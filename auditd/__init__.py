"""bpf-auditd core: configuration, events, enrichment, policy and daemon lifecycle."""
