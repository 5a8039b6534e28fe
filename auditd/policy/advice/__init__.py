"""Least privilege from behaviour: an observation becomes advice (capability bounding set,
syscall allowlist, namespaces, Landlock ruleset) and the advice becomes files (systemd drop-in,
LinuxKit capabilities, OCI seccomp profile, Landlock ruleset, YAML with the evidence)."""
