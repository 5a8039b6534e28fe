"""The command line: `run`, `doctor`, `check-config`, `check-policy`, `learn`, `dump-bpf`,
`allocmap`. Only this package chooses exit codes."""
