"""Command line: `bpf-auditd run | doctor | check-config | dump-bpf`.

Only this module chooses exit codes: 0 fine, 1 the daemon failed at run time, 2 the operator's
input (arguments, config) is unusable. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import structlog

from auditd import config as config_mod
from auditd import logs
from auditd.config import Config, ConfigError
from auditd.paths import KernelPaths

EXIT_FAILURE = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
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

    doctor = sub.add_parser("doctor", parents=[kernel], help="report what this kernel offers")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file", type=Path)

    dump = sub.add_parser(
        "dump-bpf", parents=[kernel], help="print the BPF C and cflags the probes compile with"
    )
    dump.add_argument("--config", type=Path)
    return parser


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
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            config_mod.load(args.file)
            print(f"{args.file}: ok")
            return 0
        if args.command == "doctor":
            from auditd import doctor

            return doctor.main(_paths(args), as_json=args.json)
        if args.command == "dump-bpf":
            return _dump_bpf(_load_config(args.config), _paths(args))
        return _run(_load_config(args.config), args.config, _paths(args))
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)


def _dump_bpf(config: Config, paths: KernelPaths) -> int:
    from auditd.cgroups import CgroupResolver
    from auditd.daemon import build_monitors, build_probe_set
    from auditd.telemetry import LabelCap
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


def _run(config: Config, config_path: Path | None, paths: KernelPaths) -> int:
    from auditd.daemon import Daemon, DaemonError
    from exporters.prometheus import ExporterError
    from probes.runtime import ProbeError

    logs.configure(config.log)
    log = structlog.get_logger("bpf-auditd")
    log.info("starting", config=str(config_path) if config_path else "built-in defaults")
    try:
        asyncio.run(Daemon(config, config_path, paths).run())
    except (DaemonError, ExporterError, ProbeError) as exc:
        log.error("failed", error=str(exc))
        return _fail(str(exc).splitlines()[0], EXIT_FAILURE)
    return 0
