"""Command line: `bpf-auditd run | doctor | check-config | check-policy | learn | dump-bpf |
allocmap | policy publish | advise | confine`.

Only this module chooses exit codes: 0 fine, 1 the daemon failed at run time, 2 the operator's
input (arguments, config) is unusable. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from auditd.config import schema as config_mod
from auditd.config.schema import Config
from auditd.config.yamlfile import ConfigError
from auditd.daemon import logs
from auditd.kernel.paths import KernelPaths

if TYPE_CHECKING:
    from auditd.daemon.daemon import Daemon

EXIT_FAILURE = 1
EXIT_USAGE = 2


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bpf-auditd",
        description="Audit daemon on eBPF tracepoints: kernel denials, allocations and "
        "namespace changes as Prometheus metrics, logs and alerts.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    kernel = argparse.ArgumentParser(add_help=False)
    kernel.add_argument(
        "--btf", type=Path, help="kernel BTF file (default /sys/kernel/btf/vmlinux)"
    )
    kernel.add_argument("--kallsyms", type=Path, help="kernel symbols (default /proc/kallsyms)")

    run = sub.add_parser("run", parents=[kernel], help="run the daemon")
    run.add_argument("--config", type=Path, help="YAML config file (default: built-in defaults)")
    run.add_argument("--policy", type=Path, help="policy file (overrides the config's policy.file)")

    doctor = sub.add_parser("doctor", parents=[kernel], help="report what this kernel offers")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file", type=Path)

    check_policy = sub.add_parser("check-policy", help="validate a policy file and exit")
    check_policy.add_argument("file", type=Path)

    learn = sub.add_parser(
        "learn", parents=[kernel], help="observe this host, write a policy allowing what it did"
    )
    learn.add_argument("--config", type=Path, help="YAML config file (default: built-in defaults)")
    learn.add_argument(
        "--duration", type=_duration, required=True, help="how long to observe: 30s, 10m, 2h"
    )
    learn.add_argument("--output", type=Path, required=True, help="the policy file to write")

    dump = sub.add_parser(
        "dump-bpf", parents=[kernel], help="print the BPF C and cflags the probes compile with"
    )
    dump.add_argument("--config", type=Path)

    allocmap = sub.add_parser(
        "allocmap",
        parents=[kernel],
        help="per service, the kernel call sites it makes allocate, with bytes and outstanding",
    )
    allocmap.add_argument("--config", type=Path, help="YAML config (probes.allocations sizes)")
    allocmap.add_argument(
        "--duration", type=_duration, default=10.0, help="how long to watch (default 10s)"
    )
    allocmap.add_argument("--service", help="only services matching this name or glob")
    allocmap.add_argument("--top", type=int, default=10, help="call sites per service (10)")
    allocmap.add_argument("--json", action="store_true", help="machine-readable output")

    from auditd.commands import publish

    policy = sub.add_parser("policy", help="policies for a fleet: publish to a TUF repository")
    publish.add_parser(policy.add_subparsers(dest="policy_command", required=True, metavar="STEP"))
    advise = sub.add_parser(
        "advise",
        parents=[kernel],
        help="observe services, write the least privilege each used (capabilities, syscalls, "
        "namespaces, Landlock ruleset)",
    )
    advise.add_argument(
        "--duration", type=_duration, required=True, help="how long to observe (SIGTERM ends early)"
    )
    advise.add_argument("--service", help="only services (or cgroup paths) matching this glob")
    advise.add_argument(
        "--format",
        action="append",
        help="systemd, linuxkit, oci-seccomp, landlock, yaml (repeat or comma-separate; all)",
    )
    advise.add_argument("--output", type=Path, help="directory to write into (default: stdout)")

    confine = sub.add_parser(
        "confine", help="run a command under a Landlock ruleset, seccomp profile and capabilities"
    )
    confine.add_argument("--ruleset", type=Path, help="Landlock ruleset (advise --format landlock)")
    confine.add_argument(
        "--seccomp", type=Path, help="OCI seccomp profile (advise --format oci-seccomp)"
    )
    confine.add_argument(
        "--capabilities",
        help="keep only these in the bounding set (comma-separated; empty: none)",
    )
    confine.add_argument(
        "argv", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the command and its arguments"
    )
    return parser


def _duration(text: str) -> float:
    from auditd.model.units import DURATION_EXPECTED, parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {DURATION_EXPECTED}, got {text!r}") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration above 0, got {text!r}")
    return seconds


def _paths(args: argparse.Namespace) -> KernelPaths:
    paths = KernelPaths()
    overrides = {k: getattr(args, k) for k in ("btf", "kallsyms") if getattr(args, k, None)}
    if overrides:
        from dataclasses import replace

        paths = replace(paths, **overrides)
    return paths


def _load_config(path: Path | None) -> Config:
    return Config() if path is None else config_mod.load(path)


def _fail(message: str, code: int) -> int:
    print(f"bpf-auditd: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "check-config":
            from auditd.config import webconfig
            from auditd.config.yamlfile import resolve_path

            config = config_mod.load(args.file)
            webconfig.from_config(config, args.file)
            if config.policy.tuf is not None:  # the pinned root: readable, signed by itself
                from auditd.policy.fleet.client import read_pinned_root

                read_pinned_root(resolve_path(config.policy.tuf.root, args.file))
            print(f"{args.file}: ok")
            return 0
        if args.command == "check-policy":
            from auditd.policy import language

            checked, notes = language.load_checked(args.file)
            for note in notes:
                print(f"bpf-auditd: note: {note}", file=sys.stderr)
            print(f"{args.file}: ok ({len(checked.active_rules)} rules)")
            return 0
        if args.command == "learn":
            return _learn(
                _load_config(args.config), args.config, _paths(args), args.duration, args.output
            )
        if args.command == "doctor":
            from auditd.commands import doctor

            return doctor.main(_paths(args), as_json=args.json)
        if args.command == "dump-bpf":
            return _dump_bpf(_load_config(args.config), _paths(args))
        if args.command == "allocmap":
            return _allocmap(_load_config(args.config), _paths(args), args)
        if args.command == "policy":
            return _publish(args)
        if args.command == "advise":
            return _advise(_paths(args), args)
        if args.command == "confine":
            return _confine(args)
        return _run(_load_config(args.config), args.config, _paths(args), args.policy)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)


def _publish(args: argparse.Namespace) -> int:
    from auditd.commands import publish
    from auditd.commands.repository import PublishError
    from auditd.commands.signing import KeyFileError

    # The environment is read here, at the edge; never a passphrase on the command line.
    passphrase = os.environ.get(publish.PASSPHRASE_VARIABLE)
    try:
        return publish.main(args, passphrase.encode() if passphrase else None)
    except (publish.UsageError, PublishError, KeyFileError) as exc:
        return _fail(str(exc), EXIT_USAGE)


def _allocmap(config: Config, paths: KernelPaths, args: argparse.Namespace) -> int:
    from auditd.commands import allocmap
    from probes.runtime import ProbeError

    if args.top < 1:
        return _fail(f"--top: expected a count of 1 or more, got {args.top}", EXIT_USAGE)
    logs.configure(config.log, stream=sys.stderr)  # stdout is the map
    try:
        return allocmap.main(
            config,
            paths,
            duration=args.duration,
            service=args.service,
            as_json=args.json,
            top=args.top,
        )
    except ProbeError as exc:
        return _fail(str(exc).splitlines()[0], EXIT_FAILURE)


def _advise(paths: KernelPaths, args: argparse.Namespace) -> int:
    from auditd.commands import advise
    from probes.runtime import ProbeError

    try:
        formats = advise.parse_formats(args.format)
    except ValueError as exc:
        return _fail(f"--format: {exc}", EXIT_USAGE)
    output = args.output
    if output is not None and not os.access(output if output.exists() else output.parent, os.W_OK):
        return _fail(f"{output}: cannot write there", EXIT_USAGE)
    logs.configure(Config().log, stream=sys.stderr)  # stdout carries the advice without --output
    request = advise.Request(args.duration, args.service, formats, output)
    try:
        return advise.run(paths, request, structlog.get_logger("bpf-auditd"))
    except (ProbeError, RuntimeError, OSError) as exc:
        return _fail(str(exc).splitlines()[0], EXIT_FAILURE)


def _confine(args: argparse.Namespace) -> int:
    from auditd.commands import confine
    from auditd.kernel.privileges import last_cap

    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    capabilities = None
    if args.capabilities is not None:
        capabilities = [c for c in args.capabilities.split(",") if c.strip()]
    try:
        confine.confine(
            command,
            ruleset=args.ruleset,
            profile=args.seccomp,
            capabilities=capabilities,
            last_cap=last_cap(KernelPaths()) or 40,
        )
    except confine.ConfineError as exc:
        return _fail(f"confine: {exc}", EXIT_USAGE if exc.usage else EXIT_FAILURE)
    return EXIT_FAILURE  # not reached: confine execs the command or raises


def _dump_bpf(config: Config, paths: KernelPaths) -> int:
    from auditd.daemon.wiring import build_monitors, build_probe_set
    from auditd.kernel.cgroups import CgroupResolver
    from auditd.model.labels import LabelCap
    from probes.runtime import PROBES_DIR

    logs.configure(config.log, stream=sys.stderr)
    monitors = build_monitors(config, CgroupResolver(None), LabelCap(1))
    probes = build_probe_set(config, monitors, paths, structlog.get_logger("bpf-auditd"))
    print("// cflags: " + " ".join(probes.cflags))
    print(probes.text)
    for spec in probes.specs:
        print(f"// ---- {spec.source}")
        print((PROBES_DIR / spec.source).read_text())
    return 0


def _run(
    config: Config, config_path: Path | None, paths: KernelPaths, policy: Path | None = None
) -> int:
    from auditd.daemon import wiring
    from auditd.daemon.daemon import Daemon, DaemonError
    from auditd.daemon.sdnotify import Notifier
    from exporters.prometheus import ExporterError
    from exporters.sink import SinkError
    from probes.runtime import ProbeError

    logs.configure(config.log)
    log = structlog.get_logger("bpf-auditd")
    log.info("starting", config=str(config_path) if config_path else "built-in defaults")
    # The environment is read here, at the edge: systemd passes NOTIFY_SOCKET and WATCHDOG_*.
    notifier = Notifier.from_environ(os.environ, os.getpid())
    try:
        parts = wiring.build(config, config_path, paths, policy_file=policy)
        asyncio.run(Daemon(config, config_path, paths, parts, notifier).run())
    except (DaemonError, ExporterError, ProbeError, SinkError) as exc:
        log.error("failed", error=str(exc))
        return _fail(str(exc).splitlines()[0], EXIT_FAILURE)
    return 0


def _learn(
    config: Config, config_path: Path | None, paths: KernelPaths, duration: float, output: Path
) -> int:
    """Run the probes for `duration` (or until SIGTERM/SIGINT), then write the learned policy."""
    import dataclasses
    import time

    from auditd.daemon import wiring
    from auditd.daemon.daemon import Daemon, DaemonError
    from auditd.policy.learn import Learner, write_atomically
    from exporters.prometheus import ExporterError
    from probes.runtime import ProbeError

    if not os.access(output.parent, os.W_OK):  # fail now, not after the whole observation
        return _fail(f"{output}: cannot write to {output.parent}", EXIT_USAGE)
    # A daemon may already hold the configured port: learning serves metrics on any free one.
    config = dataclasses.replace(
        config, metrics=dataclasses.replace(config.metrics, listen="127.0.0.1:0")
    )
    logs.configure(config.log)
    log = structlog.get_logger("bpf-auditd")
    log.info("learning", duration_s=duration, output=str(output))
    learner = Learner()
    # The learner evaluates events; no alert sink but the log: learning raises no alerts, and
    # must not hold an MQTT session, a spool or read broker credentials.
    parts = wiring.build(config, config_path, paths, evaluate=learner.observe, alert_sinks=False)
    daemon = Daemon(config, config_path, paths, parts)
    started = time.time_ns()
    try:
        asyncio.run(_observe(daemon, duration))
    except (DaemonError, ExporterError, ProbeError) as exc:
        log.error("failed", error=str(exc))
        return _fail(str(exc).splitlines()[0], EXIT_FAILURE)
    text = learner.render(
        ignore=daemon.alerting.policy.ignore,
        started_ns=started,
        ended_ns=time.time_ns(),
        host=parts.host,
    )
    try:
        write_atomically(output, text)
    except OSError as exc:
        return _fail(f"{output}: cannot write: {exc.strerror}", EXIT_FAILURE)
    log.info(
        "learned",
        output=str(output),
        events=learner.events,
        services=len(learner.services),
        behaviours=learner.behaviour_count,
    )
    return 0


async def _observe(daemon: Daemon, duration: float) -> None:
    """Run the daemon for `duration` seconds (or until SIGTERM/SIGINT), learning meanwhile."""
    timer = asyncio.get_running_loop().call_later(duration, daemon.request_stop)
    try:
        await daemon.run()
    finally:
        timer.cancel()
