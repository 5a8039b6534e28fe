"""bpf-auditd, the application: kernel signals in, enriched events, policy and alerts out.

Sub-packages by role, lowest first (ARCHITECTURE.md draws the flow and states the import rule):
`model` (shared values), `config` (files → typed values), `kernel` (what the kernel says about
itself), `audit` (the audit netlink source), `signals` (one package per probe family), `policy`
(rules → alerts), `daemon` (wiring and lifecycle), `commands` (the CLI). `probes/` and
`exporters/` are libraries beside it that know nothing of it.
"""
