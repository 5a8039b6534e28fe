"""Coverage-guided fuzzing (atheris, libFuzzer) of what an operator's file or the kernel hands
us, for release checks; the suite's bounded Hypothesis tests (tests/test_fuzz_*.py) run on
every commit, this runs for minutes or hours.

Targets (`--target`):
  policy   policy text -> a Policy or a ConfigError with file and line
  config   daemon config text -> a Config or a located ConfigError
  web      metrics web-config text -> a WebConfig or a located ConfigError
  audit    audit record text (type, text pairs) -> parsed events, never an exception
  decode   ring-buffer bytes -> a Denial or NamespaceChange, or ValueError
  match    (operator, pattern, text) -> a yes/no within 0.5 s, or a ConfigError at line 1

Anything else raised, or a crash, or a match slower than the bound, stops the run with the
input that did it (libFuzzer writes it as crash-<hash> in the working directory).

Install atheris once: `.venv/bin/pip install -e '.[fuzz]'`. Then, e.g. five minutes each:
`.venv/bin/python bench/fuzz.py --target policy -max_total_time=300 -rss_limit_mb=4096`
(arguments after --target go to libFuzzer; a corpus directory may follow them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports():
    from auditd.audit.assembler import Assembler
    from auditd.audit.records import RecordType
    from auditd.config import schema, webconfig, yamlfile
    from auditd.config.yamlfile import ConfigError
    from auditd.policy import language
    from auditd.policy.compiler import OPERATORS, compile_condition
    from auditd.signals.denials import decode as denials
    from auditd.signals.namespaces import decode as namespaces

NAME = "fuzz.yaml"
MATCH_BOUND_S = 0.5
RECORD_TYPES = [int(t) for t in RecordType] + [1005, 1329]


class Finding(Exception):
    """What the fuzzer should stop on."""


def _located(load: Callable[[str], object], text: str) -> None:
    try:
        load(text)
    except ConfigError as exc:
        if exc.file != NAME or "\n" in str(exc):
            raise Finding(f"badly located error: {exc!r}") from exc
        if exc.line is None and not exc.message.startswith(("empty policy", "larger than")):
            raise Finding(f"error without a line: {exc}") from exc


def _text(data: bytes) -> str:
    return atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data))


def policy(data: bytes) -> None:
    _located(lambda t: language.checked(t, NAME), _text(data))


def config(data: bytes) -> None:
    _located(lambda t: schema.loads(t, NAME), _text(data))


def web(data: bytes) -> None:
    _located(lambda t: webconfig.loads(t, NAME, base=Path("/nonexistent")), _text(data))


def audit(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    assembler = Assembler(0.5, max_pending=8)
    now = 0.0
    events = []
    while fdp.remaining_bytes():
        kind = fdp.PickValueInList(RECORD_TYPES)
        text = fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 512))
        if fdp.ConsumeBool():  # a well-formed stamp, so the body reaches the parsers
            serial = fdp.ConsumeIntInRange(0, 3)
            text = f"audit(1700000000.{serial:03d}:{serial}): {text}"
        now += fdp.ConsumeProbability()
        events += assembler.add(kind, text, now)
        events += assembler.expire(now)
    events += assembler.flush()
    for raw in events:
        raw.parse()


def decode(data: bytes) -> None:
    for decoder in (denials.decode, namespaces.decode):
        try:
            decoded = decoder(data, 0)
        except ValueError:
            continue
        assert decoded is not None


def match(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    op = fdp.PickValueInList(list(OPERATORS))
    operand = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(1, 64))
    text = fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 4096))
    source = f"target: {{{op}: {json.dumps(operand, ensure_ascii=False)}}}\n"
    try:
        node = yamlfile.compose(source, NAME)
        condition = compile_condition(node, NAME, "match") if node is not None else None
    except ConfigError as exc:
        if exc.line != 1:
            raise Finding(f"pattern error not at line 1: {exc}") from exc
        return
    if condition is None:
        return
    started = time.monotonic()
    condition.matches({"target": text})
    condition.matches({"target": [text, text[::-1]]})
    took = time.monotonic() - started
    if took > MATCH_BOUND_S:
        raise Finding(f"{op}: {operand!r} took {took:.2f} s on {len(text)} characters")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "policy": policy,
    "config": config,
    "web": web,
    "audit": audit,
    "decode": decode,
    "match": match,
}


def main() -> None:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--target", choices=sorted(TARGETS), required=True)
    args, rest = ap.parse_known_args()
    atheris.Setup([sys.argv[0], *rest], TARGETS[args.target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
