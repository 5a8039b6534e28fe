"""`python -m auditd` and the `bpf-auditd` console script."""

from __future__ import annotations

import sys

from auditd.commands.cli import main as _main


def main() -> None:
    sys.exit(_main())


if __name__ == "__main__":
    main()
