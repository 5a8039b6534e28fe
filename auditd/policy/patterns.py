"""Text patterns of the policy (`regex`, `glob`, `prefix`, `suffix`) matched in time linear in
the text, whatever the pattern: the text is often chosen by an unprivileged user (a file name).

`regex` and `glob` run on RE2 (google-re2), which has no backtracking: `(a+)+$` against
`'a' * 28 + '!'` takes microseconds instead of seconds. RE2 releases the GIL while it matches,
so a match never holds up the metrics thread. A match costs O(len(text) x program size); the
program size is capped at `MAX_PROGRAM_SIZE` when the policy is loaded (measured: a 4 KiB text
against a program of 500 takes at most a few ms; realistic patterns are 20-250). `prefix` and
`suffix` are plain string comparisons.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

import re2

MAX_PROGRAM_SIZE = 500

_OPTIONS: Any = re2.Options()
_OPTIONS.log_errors = False  # else RE2 writes C++ log lines to stderr, next to our JSON
_OPTIONS.never_capture = True  # a yes/no answer needs no groups, and is faster without

_GLOB_OPTIONS: Any = re2.Options()
_GLOB_OPTIONS.log_errors = False
_GLOB_OPTIONS.never_capture = True
_GLOB_OPTIONS.dot_nl = True  # `**` crosses everything, newlines included

# `{,n}` means {0,n} to Python's re but is literal text to RE2: refuse rather than surprise.
_OPEN_LOWER_BOUND = re.compile(r"(?<!\\)\{,\d+\}")


class PatternError(ValueError):
    """A pattern that cannot be matched in linear time, or is not valid; says why."""


class TextMatcher(Protocol):
    def matches(self, text: str) -> bool: ...


def encode(text: str) -> bytes:
    """Text as RE2 sees it: UTF-8, where anything unencodable (a lone surrogate from a name
    decoded with surrogateescape) becomes visible backslash text. RE2 would raise on such a
    `str`; and on raw invalid bytes `.` and `[^/]` match nothing, so `/secret/*` would miss
    `/secret/\\xff` (an evasion)."""
    return text.encode("utf-8", "backslashreplace")


class Linear:
    """A compiled RE2 program, matched against the whole text."""

    __slots__ = ("_regex", "program_size", "source")

    def __init__(self, source: str, options: Any) -> None:
        try:
            self._regex: Any = re2.compile(source, options=options)
        except re2.error as exc:
            raise PatternError(_re2_message(exc)) from None
        self.source = source
        self.program_size = int(self._regex.programsize)
        if self.program_size > MAX_PROGRAM_SIZE:
            raise PatternError(
                f"too complex for linear-time matching: RE2 program size {self.program_size}, "
                f"limit {MAX_PROGRAM_SIZE} (simplify it or split it into several rules)"
            )

    def matches(self, text: str) -> bool:
        return self._regex.fullmatch(encode(text)) is not None


@dataclass(frozen=True, slots=True)
class Prefix:
    text: str

    def matches(self, text: str) -> bool:
        return text.startswith(self.text)


@dataclass(frozen=True, slots=True)
class Suffix:
    text: str

    def matches(self, text: str) -> bool:
        return text.endswith(self.text)


def compile_regex(source: str) -> Linear:
    """A `regex:` in RE2 syntax. PatternError for what RE2 cannot do (backreferences,
    lookaround, atomic groups, possessive repeats) and for programs over the size limit."""
    if _OPEN_LOWER_BOUND.search(source):
        raise PatternError("`{,n}` is literal text in RE2; write `{0,n}`")
    _plain_text(source)
    return Linear(source, _OPTIONS)


def compile_glob(pattern: str) -> Linear:
    """`*` and `?` stay within one path segment, `**` crosses segments, `[abc]`/`[a-z]`/
    `[!abc]`/`[^abc]` are classes (a leading `]` is literal), the rest is literal."""
    return Linear(glob_source(pattern), _GLOB_OPTIONS)


def glob_source(pattern: str) -> str:
    """The RE2 pattern for a glob. Every literal is written as `\\x{HEX}`: no escaping rules
    to get wrong between the glob and RE2."""
    if not pattern:
        raise PatternError("empty pattern")
    _plain_text(pattern)
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            run = len(pattern) - i - len(pattern[i:].lstrip("*"))
            # One star stays in its segment; any longer run is `**` (RE2 merges adjacent stars).
            out.append("[^/]*" if run == 1 else ".*")
            i += run
            continue
        if c == "?":
            out.append("[^/]")
        elif c == "[":
            body, i = _glob_class(pattern, i)
            out.append(body)
        else:
            out.append(_hex(c))
        i += 1
    return "".join(out)


def _glob_class(pattern: str, start: int) -> tuple[str, int]:
    """The RE2 class for the `[...]` at `start`, and the index of its closing `]`."""
    j = start + 1
    negated = j < len(pattern) and pattern[j] in "!^"
    if negated:
        j += 1
    first = j
    if j < len(pattern) and pattern[j] == "]":
        j += 1  # a leading `]` is a member
    end = pattern.find("]", j)
    if end == -1:
        raise PatternError(f"unclosed '[' at position {start + 1}")
    body = pattern[first:end]
    parts: list[str] = []
    k = 0
    while k < len(body):
        if k + 2 < len(body) and body[k + 1] == "-":
            lo, hi = body[k], body[k + 2]
            if lo > hi:
                raise PatternError(f"reversed range {lo}-{hi} at position {start + 1}")
            parts.append(f"{_hex(lo)}-{_hex(hi)}")
            k += 3
        else:
            parts.append(_hex(body[k]))
            k += 1
    return f"[{'^' if negated else ''}{''.join(parts)}]", end


def _plain_text(pattern: str) -> None:
    if "\0" in pattern:
        raise PatternError("NUL character in the pattern")
    try:
        pattern.encode("utf-8")
    except UnicodeEncodeError:
        raise PatternError("not valid Unicode (a lone surrogate)") from None


def _hex(c: str) -> str:
    return f"\\x{{{ord(c):x}}}"


def _re2_message(exc: Exception) -> str:
    # re2.error carries its message as bytes and no position.
    arg = exc.args[0] if exc.args else exc
    text = arg.decode("utf-8", "backslashreplace") if isinstance(arg, bytes) else str(arg)
    return text.splitlines()[0] if text else type(exc).__name__
