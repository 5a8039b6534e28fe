"""Property tests (Hypothesis) of the policy matcher: globs agree with a plain reference
matcher, regexes with Python's re where both accept the pattern, and every operator answers
hostile text (4 KiB names, undecodable bytes, worst cases for backtracking) within a deadline.
Bounded: a few hundred examples each, no example database written."""

from __future__ import annotations

import functools
import json
import re
import warnings
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from auditd.config import yamlfile
from auditd.config.yamlfile import ConfigError
from auditd.policy.compiler import OPERATORS, compile_condition
from auditd.policy.patterns import PatternError, compile_glob, compile_regex

FUZZ = settings(max_examples=300, deadline=timedelta(seconds=1), database=None)


def reference_glob(pattern: str, text: str) -> bool:
    """The glob semantics, by dynamic programming over (pattern, text) positions: `*` and `?`
    never match `/`, a run of two or more stars matches anything, `[...]` classes (`!` or `^`
    negates, a leading `]` is a member, `a-z` ranges), anything else itself. Text is matched
    as it is logged: a lone surrogate (an undecodable byte) as its escape, `\\udcff`."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    tokens: list[tuple[str, object]] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            j = i
            while j < len(pattern) and pattern[j] == "*":
                j += 1
            tokens.append(("star" if j - i == 1 else "any", None))
            i = j
            continue
        if c == "?":
            tokens.append(("one", None))
        elif c == "[":
            j = i + 1
            negated = j < len(pattern) and pattern[j] in "!^"
            j += negated
            start = j
            if j < len(pattern) and pattern[j] == "]":
                j += 1
            end = pattern.find("]", j)
            if end < 0:
                raise ValueError("unclosed")
            body = pattern[start:end]
            members: list[tuple[str, str]] = []
            k = 0
            while k < len(body):
                if k + 2 < len(body) and body[k + 1] == "-":
                    if body[k] > body[k + 2]:
                        raise ValueError("reversed")
                    members.append((body[k], body[k + 2]))
                    k += 3
                else:
                    members.append((body[k], body[k]))
                    k += 1
            tokens.append(("class", (negated, members)))
            i = end
        else:
            tokens.append(("lit", c))
        i += 1

    @functools.cache
    def match(t: int, s: int) -> bool:
        if t == len(tokens):
            return s == len(text)
        kind, arg = tokens[t]
        if kind in ("star", "any"):
            if match(t + 1, s):
                return True
            return s < len(text) and (kind == "any" or text[s] != "/") and match(t, s + 1)
        if s == len(text):
            return False
        ch = text[s]
        if kind == "one":
            ok = ch != "/"
        elif kind == "lit":
            ok = ch == arg
        else:
            negated, members = arg  # type: ignore[misc]
            ok = any(lo <= ch <= hi for lo, hi in members) != negated
        return ok and match(t + 1, s + 1)

    return match(0, 0)


glob_patterns = st.text(alphabet="ab/*?[]!^-.", min_size=1, max_size=10)
glob_texts = st.text(alphabet="ab/-!]^.\n\udcff", max_size=12)


@FUZZ
@given(glob_patterns, st.lists(glob_texts, min_size=1, max_size=8))
def test_globs_agree_with_the_reference(pattern: str, texts: list[str]) -> None:
    try:
        want = [reference_glob(pattern, t) for t in texts]
    except ValueError:
        want = None
    try:
        glob = compile_glob(pattern)
    except PatternError:
        assert want is None, pattern
        return
    assert want is not None, pattern
    assert [glob.matches(t) for t in texts] == want


regex_patterns = st.text(alphabet="ab.*+?|()[]^-{}1,$\\", min_size=1, max_size=10)


@FUZZ
@given(regex_patterns, st.lists(st.text(alphabet="ab", max_size=8), min_size=1, max_size=8))
def test_regexes_agree_with_python_where_both_accept_them(pattern: str, texts: list[str]) -> None:
    try:
        ours = compile_regex(pattern)
    except PatternError:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # re's FutureWarning on set syntax like "[["
            theirs = re.compile(pattern)
    except re.error:
        return
    for t in texts:
        assert ours.matches(t) == (theirs.fullmatch(t) is not None), (pattern, t)


hostile_texts = st.one_of(
    st.sampled_from(
        [
            "a" * 4096 + "!",
            "/".join(["a"] * 2048),
            "/" + "aaaaaaa/" * 511,
            "a " * 2048 + "!",
            "\udcff" * 1000,
            "\\xff" * 1000,
            "x" * 65536,
        ]
    ),
    st.text(max_size=4096),
)
operands = st.one_of(
    st.sampled_from(
        [
            "(a+)+$",
            "(a|aa)*$",
            "([^/]*)*x",
            r"(\w+\s?)+$",
            "*" * 32 + "x",
            "**/" * 16 + "x",
            "*a" * 30 + "x",
            "a" * 400,
            "/**",
            "[!/]*",
            "64k",
            "0",
            "-1",
        ]
    ),
    st.text(min_size=1, max_size=40),
)


def _quoted(value: str) -> str:
    # A YAML double-quoted scalar; non-ASCII as itself (YAML has no surrogate-pair escapes).
    return json.dumps(value, ensure_ascii=False)


@settings(FUZZ, max_examples=200)
@given(st.sampled_from(OPERATORS), operands, hostile_texts)
def test_every_operator_answers_hostile_text_within_the_deadline(
    op: str, operand: str, text: str
) -> None:
    if op in ("not", "any", "all"):
        yaml_value = f"{{{op}: [{_quoted(operand)}]}}" if op != "not" else _quoted(operand)
        source = f"target: {{{op}: {yaml_value}}}\n"
    elif op == "in":
        source = f"target: {{in: [{_quoted(operand)}]}}\n"
    elif op == "exists":
        source = "target: {exists: true}\n"
    else:
        source = f"target: {{{op}: {_quoted(operand)}}}\n"
    try:
        node = yamlfile.compose(source, "fuzz.yaml")
        assert node is not None
        condition = compile_condition(node, "fuzz.yaml", "match")
    except ConfigError as exc:
        refused = exc
    else:
        refused = None
    if refused is not None:
        assert refused.line == 1, str(refused)
        return
    for event in ({"target": text}, {"target": [text, text[::-1]]}, {"target": len(text)}):
        assert condition.matches(event) in (True, False)
