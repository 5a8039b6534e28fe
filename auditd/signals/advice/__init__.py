"""What services use, for least-privilege advice (`bpf-auditd advise`): capability checks
classified by their callers, syscalls and namespaces per cgroup, file and port accesses as the
Landlock rights they need. Loaded only while advising."""
