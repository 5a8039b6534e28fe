"""A child process's JSON log lines, read on a thread of their own: every line so far, and each
new one as it comes (for waiting on an event)."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterable
from typing import Any


class JsonLines:
    def __init__(self, stream: Iterable[str] | None) -> None:
        assert stream is not None
        self.lines: list[dict[str, Any]] = []
        self.new: queue.Queue[dict[str, Any]] = queue.Queue()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: Iterable[str]) -> None:
        for line in stream:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                entry = {"event": "<not json>", "line": line}
            self.lines.append(entry)
            self.new.put(entry)
