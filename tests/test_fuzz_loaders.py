"""Property tests (Hypothesis) of the config, policy and web-config loaders: whatever the text,
the answer is a value or a ConfigError naming the file and a line — never another exception.
Bounded: a few hundred examples each, no example database written."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from auditd.config import schema, webconfig
from auditd.config.yamlfile import ConfigError
from auditd.policy import language

# The deadline is loose: the machine is shared, and a loader that loops or backtracks takes
# far longer than this.
FUZZ = settings(
    max_examples=200,
    deadline=timedelta(seconds=5),
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
NAME = "fuzz.yaml"

# Words the loaders know, so generated documents reach past the first "unknown key".
KEYS = [
    "version", "rules", "defaults", "ignore", "name", "match", "unless", "severity", "threshold",
    "dedup", "cooldown", "rate_limit", "enabled", "description", "count", "window", "by",
    "weight", "alerts", "per", "services", "cgroups", "syscalls", "errnos", "sources", "kind",
    "target", "comm", "uid", "errno", "detail.capability", "types", "eq", "ne", "in", "glob",
    "prefix", "suffix", "regex", "gt", "ge", "lt", "le", "exists", "not", "any", "all", "log",
    "level", "format", "metrics", "listen", "web_config", "probes", "denials", "namespaces",
    "allocations", "ringbuf_pages", "enabled", "policy", "file", "max_keys", "mqtt", "url",
    "protocol", "qos", "queue_size", "housekeeping_interval", "state_dir", "tls_server_config",
    "cert_file", "key_file", "basic_auth_users", "http_server_config", "headers",
]  # fmt: skip
HOSTILE_TEXT = [
    "(a+)+$", "*" * 40 + "x", "[", "[z-a]", "a{,3}", "(?=x)", r"(a)\1", "\ud800", "\x00",
    "9" * 5000, "1e999999", "2024-13-45", "0x" + "f" * 100, "~", "!!binary", "*a", "&a", "",
    "warning", "critical", "denial", "EACCES", "10s", "64MiB", "/etc/*", "127.0.0.1:0",
]  # fmt: skip

scalars = st.one_of(
    st.sampled_from(HOSTILE_TEXT),
    st.text(max_size=30),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=5),
    ),
    max_leaves=40,
)


def _policy_like(draw: Any) -> Any:
    rules = draw(
        st.lists(
            st.fixed_dictionaries(
                {"name": st.one_of(st.text(min_size=1, max_size=10), scalars), "match": documents},
                optional={k: documents for k in ("unless", "threshold", "severity", "dedup")},
            ),
            max_size=4,
        )
    )
    return {"rules": rules, **draw(st.dictionaries(st.sampled_from(KEYS), documents, max_size=3))}


policy_documents = st.composite(_policy_like)()


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, allow_unicode=True, default_flow_style=None)


EDITS = ["[", "{", ":", "- ", "\n", "  ", "&a ", "*a", "!!", "\0", "'", '"']


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[Any]) -> str:
    """A dumped document with random edits: cut, inserted and replaced characters."""
    text = _dump(draw(base))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.one_of(st.sampled_from(EDITS), st.text(max_size=4)))
        if edit == "insert":
            text = text[:at] + piece + text[at:]
        elif edit == "delete":
            text = text[:at] + text[at + len(piece) :]
        else:
            text = text[:at] + piece + text[at + len(piece) :]
    return text


def _located(exc: ConfigError, text: str) -> None:
    assert exc.file == NAME
    assert "\n" not in str(exc), str(exc)
    if exc.line is None:
        # Only statements about the whole text have no line.
        assert exc.message.startswith(("empty policy", "larger than")), str(exc)
    else:
        assert 1 <= exc.line <= text.count("\n") + 2, (exc.line, str(exc))


def _load(loader: Any, text: str) -> None:
    try:
        loader(text)
    except ConfigError as exc:
        _located(exc, text)


@FUZZ
@given(st.one_of(policy_documents.map(_dump), mutated(policy_documents), st.text(max_size=200)))
def test_policy_loader_answers_a_policy_or_a_located_error(text: str) -> None:
    _load(lambda t: language.checked(t, NAME), text)


@FUZZ
@given(st.one_of(documents.map(_dump), mutated(documents), st.text(max_size=200)))
@example(_dump({"version": None, "\n": []}))  # found here: a key's newline split the error
def test_config_loader_answers_a_config_or_a_located_error(text: str) -> None:
    _load(lambda t: schema.loads(t, NAME), text)


@settings(FUZZ, max_examples=100)
@given(st.one_of(documents.map(_dump), mutated(documents)))
def test_web_config_loader_answers_a_value_or_a_located_error(text: str) -> None:
    _load(lambda t: webconfig.loads(t, NAME, base=Path("/nonexistent")), text)
