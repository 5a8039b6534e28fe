"""A pipe workload for allocation tests: one process in a given cgroup, driven line by line, that
churns pipes (create and close) or holds pipes open, so kernel allocations happen on cue."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import TracebackType

# The child joins the cgroup before it reads its first command, so everything it makes the
# kernel allocate from then on is the cgroup's.
_PIPES = r"""
import os, sys
with open(sys.argv[1], "w") as f:
    f.write(str(os.getpid()))
print("joined", flush=True)
held = []
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "churn":
        for _ in range(int(arg)):
            r, w = os.pipe()
            os.close(r)
            os.close(w)
    elif cmd == "hold":
        held += [os.pipe() for _ in range(int(arg))]
    elif cmd == "close":
        for r, w in held:
            os.close(r)
            os.close(w)
        held = []
    elif cmd == "exit":
        break
    print("done", flush=True)
"""


class PipeWorkload:
    """`with PipeWorkload(cgroup) as w: w.churn(n); w.hold(k); w.close()`; exits on leaving."""

    def __init__(self, cgroup: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PIPES, str(cgroup / "cgroup.procs")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._expect("joined")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _expect(self, word: str) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != word:
            raise RuntimeError(f"pipe workload said {line!r}, expected {word!r}")

    def _do(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        self._expect("done")

    def churn(self, n: int) -> None:
        self._do(f"churn {n}")

    def hold(self, k: int) -> None:
        self._do(f"hold {k}")

    def close(self) -> None:
        self._do("close")

    def exit(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("exit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)

    def __enter__(self) -> PipeWorkload:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.exit()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
