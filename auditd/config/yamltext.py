"""A YAML file's text and node tree, within bounds, whatever the file holds: every problem is
one ConfigError with the file and (where the file has one) the line, never a traceback or a
hang.

Bounds: the file is a regular file (a FIFO or a device is refused without blocking: opened with
O_NONBLOCK, checked with fstat before any read) of at most `MAX_FILE_BYTES`; collections nest
at most `MAX_DEPTH` deep; aliases repeat at most `MAX_ALIASED` values in all (an alias bomb
expands exponentially, and every reader of the tree walks it expanded); numbers have at most
`MAX_NUMBER_CHARS` characters (Python refuses to convert integers of more than 4300 digits).
The tree is composed from libyaml's event stream by a loop, not by recursion, so no depth
reaches Python's recursion limit.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import stat
from collections.abc import Iterator
from typing import Any, Final

import yaml
from yaml.events import (
    AliasEvent,
    CollectionStartEvent,
    DocumentStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)

MAX_FILE_BYTES: Final = 16 << 20  # a learned policy of 100 services x 1000 behaviours: ~15 MB
MAX_DEPTH: Final = 64
MAX_ALIASED: Final = 100_000
MAX_NUMBER_CHARS: Final = 64

_STR: Final = "tag:yaml.org,2002:str"
_NUMBERS: Final = frozenset({"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"})
# What YAML 1.1 allows in a stream (its reader refuses the rest, without a line number).
_NOT_PRINTABLE: Final = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)


class YamlTextError(Exception):
    """Where (line, or None for the whole file) and what; yamlfile adds the file name."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def read(path: os.PathLike[str] | str) -> str:
    """The file's text. YamlTextError for what is not a readable regular UTF-8 file of at most
    MAX_FILE_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise YamlTextError(None, f"cannot read: {exc.strerror}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise YamlTextError(None, f"cannot read: not a regular file ({_file_kind(mode)})")
        data = _read_at_most(fd, MAX_FILE_BYTES)
    except OSError as exc:
        raise YamlTextError(None, f"cannot read: {exc.strerror}") from exc
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise YamlTextError(line, f"not UTF-8 text (byte {data[exc.start]:#04x})") from exc


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := os.read(fd, min(1 << 20, limit + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise YamlTextError(None, f"larger than {limit >> 20} MiB")
    return b"".join(chunks)


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a file"


def compose(text: str) -> yaml.Node | None:
    """The node tree of a single-document YAML text (marks kept for error lines); None for an
    empty document. Scalars are typed (their tags resolved) and every non-text scalar is
    checked to construct, so reading a value later cannot fail."""
    bad = _NOT_PRINTABLE.search(text)
    if bad is not None:
        line = text.count("\n", 0, bad.start()) + 1
        raise YamlTextError(line, f"invalid YAML: character U+{ord(bad[0]):04X} is not allowed")
    if len(text) > MAX_FILE_BYTES:
        raise YamlTextError(None, f"larger than {MAX_FILE_BYTES >> 20} MiB")
    # Composing creates many objects at once; the cyclic collector's passes over the growing
    # tree made a 5 MB learned policy take 6.5 s instead of 0.9 s (nothing here is cyclic).
    with _no_gc():
        return _Composer(text).run()


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class _Frame:
    __slots__ = ("anchor", "key", "node", "size")

    def __init__(self, node: yaml.CollectionNode, anchor: str | None) -> None:
        self.node = node
        self.anchor = anchor
        self.key: yaml.Node | None = None
        self.size = 1  # values under this node, aliases expanded


class _Composer:
    """yaml.compose, as a loop over libyaml's events with the bounds checked on the way."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.line: int | None = None  # of the last event read: where a library error points
        self.stack: list[_Frame] = []
        self.anchors: dict[str, tuple[yaml.Node, int]] = {}
        self.root: yaml.Node | None = None
        self.documents = 0
        self.aliased = 0
        self.constructor = yaml.constructor.SafeConstructor()

    def run(self) -> yaml.Node | None:
        loader: Any = None
        try:
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(self.text)
            while (event := loader.get_event()) is not None:
                self.line = event.start_mark.line + 1
                self._event(loader, event)
        except YamlTextError:
            raise
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else self.line
            raise YamlTextError(line, f"invalid YAML: {exc.problem or exc.context}") from exc
        except Exception as exc:  # whatever else the library raises: one line, located
            raise YamlTextError(self.line, f"invalid YAML: {_first_line(exc)}") from exc
        finally:
            if loader is not None:
                loader.dispose()
        return self.root

    def _event(self, loader: Any, event: Event) -> None:
        if isinstance(event, DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                raise YamlTextError(self.line, "invalid YAML: expected a single document")
            return
        if isinstance(event, ScalarEvent):
            self._add(self._scalar(loader, event), 1, event.anchor)
        elif isinstance(event, CollectionStartEvent):
            if len(self.stack) >= MAX_DEPTH:
                raise YamlTextError(self.line, f"nested deeper than {MAX_DEPTH} levels")
            self.stack.append(_Frame(self._collection(loader, event), event.anchor))
        elif isinstance(event, SequenceEndEvent | MappingEndEvent):
            frame = self.stack.pop()
            frame.node.end_mark = event.end_mark
            self._add(frame.node, frame.size, frame.anchor)
        elif isinstance(event, AliasEvent):
            if event.anchor not in self.anchors:  # also an alias inside its own anchor
                raise YamlTextError(self.line, f"invalid YAML: unknown alias *{event.anchor}")
            node, size = self.anchors[event.anchor]
            self.aliased += size
            if self.aliased > MAX_ALIASED:
                raise YamlTextError(
                    self.line, f"aliases repeat more than {MAX_ALIASED} values in all"
                )
            self._add(node, size, None)

    def _add(self, node: yaml.Node, size: int, anchor: str | None) -> None:
        if anchor is not None:
            self.anchors[anchor] = (node, size)
        if not self.stack:
            self.root = node
            return
        top = self.stack[-1]
        top.size += size
        if isinstance(top.node, yaml.SequenceNode):
            top.node.value.append(node)
        elif top.key is None:
            top.key = node
        else:
            top.node.value.append((top.key, node))
            top.key = None

    def _scalar(self, loader: Any, event: ScalarEvent) -> yaml.ScalarNode:
        tag = event.tag
        if tag is None or tag == "!":
            tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        marks: tuple[Any, Any] = (event.start_mark, event.end_mark)  # libyaml's or PyYAML's
        node = yaml.ScalarNode(tag, event.value, *marks, style=event.style)
        if tag != _STR:
            if tag in _NUMBERS and len(event.value) > MAX_NUMBER_CHARS:
                raise YamlTextError(
                    self.line,
                    f"number of {len(event.value)} characters; at most {MAX_NUMBER_CHARS}",
                )
            try:
                self.constructor.construct_object(node)
                self.constructor.constructed_objects.clear()  # checked, not kept
            except Exception as exc:  # a date that is no date, an unknown tag, bad base64
                raise YamlTextError(
                    self.line, f"cannot read the value {_short(event.value)}: {_first_line(exc)}"
                ) from exc
        return node

    @staticmethod
    def _collection(loader: Any, event: CollectionStartEvent) -> yaml.CollectionNode:
        sequence = isinstance(event, SequenceStartEvent)
        kind: type[yaml.CollectionNode] = yaml.SequenceNode if sequence else yaml.MappingNode
        tag = event.tag
        if tag is None or tag == "!":
            tag = loader.resolve(kind, None, event.implicit)
        assert isinstance(event, SequenceStartEvent | MappingStartEvent)
        start: Any = event.start_mark  # libyaml's Mark or PyYAML's: both have `.line`
        return kind(tag, [], start, None, flow_style=event.flow_style)


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        text = str(exc.problem or exc.context or type(exc).__name__)
    else:
        text = str(exc) or type(exc).__name__
    return text.splitlines()[0] if text.strip() else type(exc).__name__


def _short(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "...")
