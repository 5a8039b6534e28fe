"""Policy text patterns: linear time on hostile text, RE2's syntax refused with a reason, and no
way around a rule through undecodable bytes. No kernel."""

from __future__ import annotations

import json
import time

import pytest

from auditd.config import yamlfile
from auditd.policy import filters
from auditd.policy import language as policy
from auditd.policy.compiler import compile_condition
from auditd.policy.conditions import Condition
from auditd.policy.patterns import (
    MAX_PROGRAM_SIZE,
    PatternError,
    compile_glob,
    compile_regex,
    glob_source,
)

# The measured worst cases for the old (backtracking) matcher: each took seconds to
# minutes on ONE refusal. Generous bound for all of them together: a DoS bound, not a benchmark.
HOSTILE = [
    ("regex", "(a+)+$", "a" * 28 + "!"),
    ("regex", "(a|aa)*$", "a" * 4096 + "!"),
    ("regex", "([^/]*)*x", "/".join(["a" * 7] * 512)),
    ("regex", r"(\w+\s?)+$", "a " * 2048 + "!"),
    ("glob", "*" * 28 + "x", "a" * 19),
    ("glob", "*" * 32 + "x", "/" + "a" * 4095),
    ("glob", "*a" * 32 + "x", "a" * 4096),
    ("glob", "**/" * 16 + "x", "/".join(["aaaaaaa"] * 512)),
    ("prefix", "a" * 4000 + "b", "a" * 4096),
    ("suffix", "b" + "a" * 4000, "a" * 4096),
]


def _condition(op: str, pattern: str) -> Condition:
    # A JSON string is a YAML double-quoted scalar: the pattern arrives as written here.
    node = yamlfile.compose(f"target: {{{op}: {json.dumps(pattern)}}}\n", "t.yaml")
    assert node is not None
    return compile_condition(node, "t.yaml", "match")


def test_worst_cases_of_a_backtracking_matcher_answer_at_once() -> None:
    started = time.monotonic()
    for op, pattern, text in HOSTILE:
        cond = _condition(op, pattern)
        assert cond.matches({"target": text}) is False, (op, pattern)
    assert time.monotonic() - started < 2.0  # the old matcher: 8.6 s for the first alone


def test_the_ignore_lists_cgroup_globs_are_linear_too() -> None:
    ignore = policy.loads(
        "ignore:\n  cgroups: ['/" + "*" * 32 + "x']\nrules: []\n", "p.yaml"
    ).ignore
    started = time.monotonic()
    assert not filters.ignored_cgroup(ignore, "/" + "a" * 4000)
    assert not filters.ignores(ignore, {"cgroup": "/user.slice/" + "a" * 4000})
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        ("/secret/*", "/secret/\\xff"),  # how kernel_text shows an undecodable byte
        ("/secret/*", "/secret/\udcff"),  # a name decoded with surrogateescape
        ("/secret/?*", "/secret/\udcff\udc80"),
        ("/secret/**", "/secret/a/\udcff/b"),
    ],
)
def test_undecodable_bytes_cannot_slip_past_a_glob(pattern: str, text: str) -> None:
    assert compile_glob(pattern).matches(text)


def test_a_regex_matches_text_with_surrogates_without_raising() -> None:
    assert compile_regex("/secret/.*").matches("/secret/\udcff")
    assert not compile_regex("/public/.*").matches("/secret/\udcff")


@pytest.mark.parametrize(
    ("source", "says"),
    [
        (r"(a)\1", "invalid escape sequence: \\1"),
        ("(?P<x>a)(?P=x)", "invalid perl operator: (?P"),
        ("(?=a)", "invalid perl operator: (?="),
        ("(?<=a)b", "invalid perl operator: (?<"),
        ("(?>a+)", "invalid perl operator: (?>"),
        ("a*+", "bad repetition operator: *+"),
        (r"a\Z", "invalid escape sequence: \\Z"),
        ("a{1001}", "invalid repetition size"),
        ("a{,3}", "`{,n}` is literal text in RE2"),
        ("(?:a?){300}a{300}", f"limit {MAX_PROGRAM_SIZE}"),
        ("a\0", "NUL character"),
        ("\ud800", "lone surrogate"),
    ],
)
def test_what_re2_cannot_do_is_refused_with_a_reason(source: str, says: str) -> None:
    with pytest.raises(PatternError) as info:
        compile_regex(source)
    assert says in str(info.value)
    assert "\n" not in str(info.value)


def test_a_realistic_pattern_is_far_below_the_size_limit() -> None:
    for source in (r"/home/[^/]+/\.ssh/.*", r".*\.(pem|key|crt)", "/etc/(shadow|gshadow)-?"):
        assert compile_regex(source).program_size < MAX_PROGRAM_SIZE / 10


def test_runs_of_stars_compile_to_one_small_program() -> None:
    assert glob_source("/a/***b") == r"\x{2f}\x{61}\x{2f}.*\x{62}"
    assert compile_glob("*" * 1000 + "x").program_size < 20


def test_patterns_compare_by_source_so_an_unchanged_policy_stays_unchanged() -> None:
    text = "rules:\n  - name: r\n    match: {target: {regex: '/a/.*', glob: '/b/*'}}\n"
    assert policy.loads(text) == policy.loads(text)
    assert policy.loads(text) != policy.loads(text.replace("/a/", "/c/"))
