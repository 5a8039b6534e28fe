"""`bpf-auditd advise`: watch services for a while (or until SIGTERM), then write the least
privilege each worked with — systemd drop-in, LinuxKit capabilities, OCI seccomp profile,
Landlock ruleset, YAML with the evidence.

Its probes are its own: loaded when it starts, detached when it ends; the daemon never runs
them.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auditd.kernel.paths import KernelPaths
from auditd.policy.advice import render
from auditd.policy.advice.advice import Advice, advise
from auditd.policy.learn import write_atomically
from auditd.signals.advice.observer import Observer, Parts

POLL_S = 0.5


@dataclass(frozen=True, slots=True)
class Request:
    duration: float
    service: str | None
    formats: tuple[str, ...]
    output: Path | None


def parse_formats(values: Sequence[str] | None) -> tuple[str, ...]:
    """`--format a,b --format c` → (a, b, c); every format when none is given."""
    if not values:
        return render.FORMATS
    found: list[str] = []
    for value in values:
        for raw in value.split(","):
            name = raw.strip()
            if name not in render.FORMATS:
                raise ValueError(f"unknown format {name!r} (expected {', '.join(render.FORMATS)})")
            if name not in found:
                found.append(name)
    return tuple(found)


def parts_for(formats: Sequence[str]) -> Parts:
    """Observe only what the formats asked for need (each part has its cost)."""
    every = "yaml" in formats
    return Parts(
        capabilities=every or "systemd" in formats or "linuxkit" in formats,
        syscalls=every or "systemd" in formats or "oci-seccomp" in formats,
        files=every or "landlock" in formats,
    )


def libseccomp_names() -> Callable[[str], bool] | None:
    """Whether this host's libseccomp (through which systemd reads SystemCallFilter=) knows a
    syscall name; None without Debian's python3-seccomp."""
    try:
        import seccomp
    except ImportError:
        return None

    def known(name: str) -> bool:
        try:
            return int(seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)) >= 0
        except (ValueError, RuntimeError, TypeError):
            return False

    return known


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT end the observation early (the advice is still written)."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop.set())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def observe(observer: Observer, duration: float, stop: threading.Event) -> None:
    deadline = time.monotonic() + duration
    while (left := deadline - time.monotonic()) > 0:
        if stop.wait(min(POLL_S, left)):
            return
        observer.poll()


def write(
    advices: Sequence[Advice], request: Request, known: Callable[[str], bool] | None
) -> list[Path]:
    written = []
    output = request.output
    for advice in advices:
        names = render.file_names(advice.service)
        for fmt in request.formats:
            if fmt == "landlock" and advice.ruleset is None:
                continue  # files were not observed (the log says why): no ruleset to apply
            text = render.render(advice, fmt, known)
            if output is None:
                sys.stdout.write(f"# ---- {advice.service}: {fmt}\n{text}")
                continue
            path = output / names[fmt]
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, text)
            written.append(path)
    return written


def run(paths: KernelPaths, request: Request, log: Any) -> int:
    """Observe, then write; the exit code (1: nothing matched, or the probes failed)."""
    stop = threading.Event()
    parts = parts_for(request.formats)
    with stop_on_signals(stop):
        observer = Observer(paths, log, parts=parts, pattern=request.service)
        observer.start()
        log.info(
            "advising",
            service=request.service or "*",
            duration_s=request.duration,
            observing=list(observer.parts.names()),
            problems=observer.problems,
        )
        try:
            observe(observer, request.duration, stop)
        finally:
            observation = observer.finish()
    advices = [advise(seen, observation) for seen in observation.services]
    if not advices:
        print(
            f"bpf-auditd: no service matching {request.service or '*'} ran while advising",
            file=sys.stderr,
        )
        return 1
    written = write(advices, request, libseccomp_names())
    for advice in advices:
        log.info(
            "advised",
            service=advice.service,
            seconds=round(advice.seconds, 1),
            capabilities=list(advice.bounding_set),
            syscalls=len(advice.allow),
            namespaces=list(advice.namespaces),
            landlock_rules=len(advice.ruleset.rules) if advice.ruleset else None,
            problems=list(advice.problems),
        )
    if written:
        log.info("written", files=[str(p) for p in written])
    return 0
