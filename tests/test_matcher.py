"""Rule conditions: each operator, nesting, list-valued and missing fields. No kernel."""

from __future__ import annotations

import pytest

from auditd.config import yamlfile as config
from auditd.config.yamlfile import ConfigError
from auditd.model.units import parse_duration, parse_number
from auditd.policy.compiler import compile_condition
from auditd.policy.conditions import AnyOf, Condition, IndexedAny
from auditd.policy.patterns import compile_glob

DENIAL = {
    "kind": "denial",
    "source": "syscall",
    "syscall": "openat",
    "errno": "EACCES",
    "target": "/etc/ssh/ssh_host_ed25519_key",
    "uid": 65534,
    "comm": "123",
    "service": "web.service",
    "target_truncated": False,
    "detail": {"capability": "CAP_SYS_ADMIN", "blockers": ["fs.read_file"]},
}
NSCHANGE = {"kind": "namespace_change", "op": "unshare", "types": ["net", "uts"], "escape": False}


def cond(text: str) -> Condition:
    node = config.compose(text, "t.yaml")
    assert node is not None
    return compile_condition(node, "t.yaml", "match")


@pytest.mark.parametrize(
    ("text", "event", "want"),
    [
        # equality, and what counts as equal
        ("syscall: openat", DENIAL, True),
        ("syscall: open", DENIAL, False),
        ("uid: 65534", DENIAL, True),
        ("uid: '65534'", DENIAL, True),  # text in the policy, number in the event
        ("comm: 123", DENIAL, True),  # YAML reads 123 as a number; the event logs text
        ("target_truncated: false", DENIAL, True),
        ("target_truncated: 0", DENIAL, False),  # a boolean is not a number
        ("uid: {eq: 65534}", DENIAL, True),
        ("uid: {ne: 0}", DENIAL, True),
        ("uid: {ne: 65534}", DENIAL, False),
        # lists: any of
        ("errno: [EPERM, EACCES]", DENIAL, True),
        ("errno: {in: [EPERM]}", DENIAL, False),
        # patterns
        ("target: {glob: /etc/*/ssh_host_*}", DENIAL, True),
        ("target: {glob: /etc/*}", DENIAL, False),  # * stays within one segment
        ("target: {glob: /etc/**}", DENIAL, True),
        ("target: {glob: '/etc/ssh/ssh_host_[!r]*'}", DENIAL, True),
        ("target: {glob: '/etc/ssh/ssh_host_[r]*'}", DENIAL, False),
        ("target: {glob: '/etc/ssh/ssh_host_ed25519_ke?'}", DENIAL, True),
        ("target: {prefix: /etc/ssh/}", DENIAL, True),
        ("target: {prefix: /etc/sshd}", DENIAL, False),
        ("target: {suffix: _key}", DENIAL, True),
        ("target: {regex: '/etc/.*_key'}", DENIAL, True),
        ("target: {regex: '/etc/'}", DENIAL, False),  # the whole value must match
        ("comm: {prefix: '12'}", DENIAL, True),
        ("uid: {glob: '6*'}", DENIAL, False),  # patterns test text only
        # numbers
        ("uid: {gt: 1000}", DENIAL, True),
        ("uid: {ge: 65534, le: 65534}", DENIAL, True),
        ("uid: {lt: 65534}", DENIAL, False),
        ("uid: {gt: 64k}", DENIAL, True),  # 64000
        ("uid: {gt: 64KiB}", DENIAL, False),  # 65536
        ("comm: {gt: 1}", DENIAL, False),  # text is not compared as a number
        # presence
        ("exe: {exists: false}", DENIAL, True),
        ("target: {exists: true}", DENIAL, True),
        ("exe: x", DENIAL, False),  # a missing field fails a test ...
        ("exe: {not: x}", DENIAL, True),  # ... and passes its negation
        # list-valued fields: any element, or `eq` with a list for exactly that set
        ("types: net", NSCHANGE, True),
        ("types: [mnt, uts]", NSCHANGE, True),
        ("types: {eq: [uts, net]}", NSCHANGE, True),
        ("types: {eq: [net]}", NSCHANGE, False),
        ("types: {eq: [net, uts, mnt]}", NSCHANGE, False),
        ("op: {eq: [unshare]}", NSCHANGE, False),  # a scalar field is not a set
        # dotted names reach into mappings
        ("detail.capability: CAP_SYS_ADMIN", DENIAL, True),
        ("detail.blockers: fs.read_file", DENIAL, True),
        ("detail.nothing: {exists: false}", DENIAL, True),
        # several fields: all must pass
        ("{kind: denial, errno: EACCES, uid: 0}", DENIAL, False),
        ("{kind: denial, errno: EACCES, uid: 65534}", DENIAL, True),
    ],
)
def test_operators(text: str, event: dict[str, object], want: bool) -> None:
    assert cond(text).matches(event) is want


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("any: [{uid: 0}, {errno: EACCES}]", True),
        ("any: [{uid: 0}, {errno: EPERM}]", False),
        ("all: [{uid: 65534}, {errno: EACCES}]", True),
        ("all: [{uid: 65534}, {errno: EPERM}]", False),
        ("not: {uid: 0}", True),
        ("not: {any: [{uid: 0}, {errno: EACCES}]}", False),
        (
            "kind: denial\n"
            "any:\n"
            "  - all: [{source: syscall}, {not: {target: {prefix: /tmp/}}}]\n"
            "  - source: landlock\n",
            True,
        ),
        ("target: {not: {any: [{prefix: /tmp/}, {glob: '/etc/**'}]}}", False),
        ("target: {all: [{prefix: /etc/}, {suffix: _key}]}", True),
        ("target: {any: [/x, {suffix: _key}]}", True),
    ],
)
def test_nesting(text: str, want: bool) -> None:
    assert cond(text).matches(DENIAL) is want


def test_empty_match_matches_everything() -> None:
    assert cond("{}").matches(DENIAL)


@pytest.mark.parametrize(
    ("text", "line", "key", "says"),
    [
        ("target: {startswith: /etc}\n", 1, "match.target.startswith", "unknown operator"),
        ("a: 1\nb: 2\ntarget:\n  regex: 'a('\n", 4, "match.target.regex", "bad regex 'a('"),
        ("target: {glob: '/etc/[ab'}\n", 1, "match.target.glob", "unclosed '['"),
        ("uid: {gt: lots}\n", 1, "match.uid.gt", "expected a number"),
        ("uid: {exists: 1}\n", 1, "match.uid.exists", "expected true or false"),
        ("any: {uid: 1}\n", 1, "match.any", "expected a non-empty list of conditions"),
        ("any: []\n", 1, "match.any", "non-empty list"),
        ("uid: []\n", 1, "match.uid", "at least one value"),
        ("'bad name': 1\n", 1, "match.bad name", "expected an event field name"),
        ("uid: 1\nuid: 2\n", 2, "match.uid", "given twice"),
        ("errno: {in: EPERM}\n", 1, "match.errno.in", "expected a list of values"),
        ("target: {prefix: ''}\n", 1, "match.target.prefix", "non-empty text"),
        ("uid: {}\n", 1, "match.uid", "expected operators"),
    ],
)
def test_errors_name_line_and_key(text: str, line: int, key: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        cond(text)
    assert (info.value.line, info.value.key) == (line, key)
    assert says in info.value.message


def test_condition_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="expected a mapping of event fields"):
        cond("- a\n")


@pytest.mark.parametrize(
    ("pattern", "path", "want"),
    [
        ("/a/*", "/a/b", True),
        ("/a/*", "/a/b/c", False),
        ("/a/**", "/a/b/c", True),
        ("/a/**/z", "/a/b/c/z", True),
        ("*.service", "web.service", True),
        ("/a/[bc]", "/a/c", True),
        ("/a/[!bc]", "/a/c", False),
        ("/a/[]]", "/a/]", True),
        ("/a.b", "/aXb", False),  # dots are literal
        ("/a/(x)", "/a/(x)", True),
    ],
)
def test_glob(pattern: str, path: str, want: bool) -> None:
    assert compile_glob(pattern).matches(path) is want


@pytest.mark.parametrize("bad", ["", "/a/[b", "/a/[z-a]"])
def test_bad_glob(bad: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each message is checked in the policy tests
        compile_glob(bad)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("10s", 10), ("5m", 300), ("1h", 3600), ("1d", 86400), (7, 7), (2.5, 2.5)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["-5s", "soon", "5 minutes", True, None, "1h30m"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "value"), [(5, 5), ("64MiB", 64 << 20), ("1.5k", 1500), ("2G", 2e9), ("10", 10)]
)
def test_sizes(text: object, value: float) -> None:
    assert parse_number(text) == value


def test_an_indexed_any_decides_like_a_plain_one() -> None:
    entries = [
        f"{{service: s{i}, target: /t/{i}, flag: {str(i % 2 == 0).lower()}}}" for i in range(40)
    ]
    entries += ["{service: s1, target: {prefix: /p/}}", "{uid: 7}", "{service: null, target: x}"]
    text = "any:\n" + "".join(f"  - {e}\n" for e in entries)
    indexed = cond(text)
    assert isinstance(indexed, IndexedAny)
    plain = AnyOf(indexed.items)
    events: list[dict[str, object]] = [
        {"service": "s3", "target": "/t/3", "flag": False},
        {"service": "s4", "target": "/t/4", "flag": True},
        {"service": "s4", "target": "/t/4", "flag": "True"},  # text is not a boolean
        {"service": "s4", "target": "/t/4"},  # a missing field never equals
        {"service": ["s0", "s9"], "target": "/t/9", "flag": False},  # lists: any element
        {"service": "s1", "target": "/p/x"},
        {"uid": 7},
        {"uid": "7"},
        {"service": None, "target": "x"},
        {"service": "s2", "target": {"nested": 1}, "flag": True},
        {},
    ]
    got = [indexed.matches(e) for e in events]
    assert got == [plain.matches(e) for e in events]
    assert got == [True, True, False, False, True, True, True, True, True, False, False]
