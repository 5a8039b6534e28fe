"""Kernel addresses → `function+0xoffset` names, from /proc/kallsyms, loaded once and cached.

Where kptr_restrict hides addresses (every address reads as zero, LinuxKit's default), names
cannot be found: addresses are shown as they are, and `hidden` says why.

The table (~120,000 text symbols) is kept as packed arrays and one blob of names: ~5 MB where
Python lists of ints and strings took ~11 MB, and ~20 MB while sorting them (the daemon's
largest allocation).
"""

from __future__ import annotations

import bisect
import threading
from array import array
from pathlib import Path

# Text symbols (code): call sites are return addresses inside functions.
_TEXT_TYPES = frozenset("tTwW")
# An address further than this past the last symbol is not in the kernel's text.
_MAX_DISTANCE = 1 << 20
_CACHE_LIMIT = 1 << 16


class KernelSymbols:
    """Thread-safe: the table is read on first use, names are cached per address."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._starts = array("Q")  # sorted addresses
        self._order = array("I")  # for each sorted address, its name's number
        self._name_at = array("I")  # name number -> offset in _blob (one more: the end)
        self._blob = b""
        self._cache: dict[int, str] = {}
        self._loaded = False
        self._lock = threading.Lock()
        self.hidden = False  # readable, but every address is zero (kptr_restrict)
        self.problem = ""  # why names are off, if they are

    def _load(self) -> None:
        addresses = array("Q")
        name_at = array("I")
        blob = bytearray()
        zeros = 0
        try:
            with self.path.open("rb") as lines:
                for line in lines:
                    parts = line.split()
                    if len(parts) < 3 or parts[1].decode(errors="replace") not in _TEXT_TYPES:
                        continue
                    address = int(parts[0], 16)
                    if address == 0:
                        zeros += 1
                        continue
                    addresses.append(address)
                    name_at.append(len(blob))
                    blob += parts[2] if len(parts) == 3 else parts[2] + b" " + parts[3]
        except (OSError, ValueError) as exc:
            self.problem = f"cannot read {self.path}: {exc}"
            return
        if not addresses:
            self.hidden = zeros > 0
            self.problem = (
                f"{self.path} shows every address as zero (kptr_restrict): call sites stay "
                "raw addresses"
                if self.hidden
                else f"{self.path} lists no text symbols"
            )
            return
        name_at.append(len(blob))
        if all(addresses[i] <= addresses[i + 1] for i in range(len(addresses) - 1)):
            order = array("I", range(len(addresses)))  # as the kernel lists them (usually)
            self._starts = addresses
        else:
            order = array("I", sorted(range(len(addresses)), key=addresses.__getitem__))
            self._starts = array("Q", (addresses[i] for i in order))
        self._order = order
        self._name_at = name_at
        self._blob = bytes(blob)

    def _name(self, number: int) -> str:
        start, end = self._name_at[number], self._name_at[number + 1]
        return self._blob[start:end].decode("utf-8", "replace")

    def status(self) -> str:
        """Where names come from, or why call sites stay raw addresses."""
        with self._lock:
            self._ensure_loaded()
        return self.problem or str(self.path)

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._load()
            self._loaded = True

    def name(self, address: int) -> str:
        """`function+0xoff` (`function+0xoff [module]` for modules), or the address in hex."""
        found = self._cache.get(address)
        if found is not None:
            return found
        with self._lock:
            self._ensure_loaded()
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            found = self._cache[address] = self._lookup(address)
        return found

    def range_of(self, function: str) -> tuple[int, int] | None:
        """[start, end) of a kernel text symbol: from its address to the next symbol's. None when
        names are hidden, or the name is missing or not unique."""
        with self._lock:
            self._ensure_loaded()
        found = [i for i, n in enumerate(self._order) if self._name(n) == function]
        if len(found) != 1 or found[0] + 1 >= len(self._starts):
            return None
        return self._starts[found[0]], self._starts[found[0] + 1]

    def _lookup(self, address: int) -> str:
        at = bisect.bisect_right(self._starts, address) - 1
        if at < 0 or address - self._starts[at] > _MAX_DISTANCE:
            return f"0x{address:x}"
        name, _, module = self._name(self._order[at]).partition(" ")
        offset = f"{name}+0x{address - self._starts[at]:x}"
        return f"{offset} {module}" if module else offset
