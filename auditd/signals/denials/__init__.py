"""Denials: refusals by the kernel (EACCES/EPERM, failed capability checks, seccomp, and the
Landlock and SELinux causes joined from audit records)."""
