"""auditd.btf on the running kernel's BTF, with bpftool's decoding of the same file as oracle."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from auditd.kernel.btf import Btf, BtfError

VMLINUX = Path("/sys/kernel/btf/vmlinux")

_TYPE_LINE = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
_MEMBER_LINE = re.compile(r"^\t'([^']*)' type_id=(\d+) bits_offset=(\d+)(?: bitfield_size=(\d+))?$")
_QUALIFIERS = {"TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"}


@dataclass
class _Type:
    kind: str
    name: str
    size: int | None
    target: int | None
    members: list[tuple[str, int, int, int]] = field(default_factory=list)


@dataclass
class _Dump:
    """`bpftool btf dump format raw`, decoded just enough to answer offsetof independently."""

    types: dict[int, _Type]

    by_name: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for type_id, t in self.types.items():
            self.by_name.setdefault((t.kind, t.name), []).append(type_id)

    def ids(self, kind: str, name: str) -> list[int]:
        return self.by_name.get((kind, name), [])

    def strip(self, type_id: int) -> int:
        while self.types[type_id].kind in _QUALIFIERS:
            target = self.types[type_id].target
            assert target is not None
            type_id = target
        return type_id

    def find(self, type_id: int, name: str) -> tuple[int, int, int] | None:
        for member, member_type, bits, bitfield in self.types[type_id].members:
            if member == name:
                return bits, member_type, bitfield
            if member == "(anon)":
                inner = self.strip(member_type)
                if self.types[inner].kind in ("STRUCT", "UNION"):
                    found = self.find(inner, name)
                    if found is not None:
                        return bits + found[0], found[1], found[2]
        return None

    def offsetof(self, struct_name: str, path: str) -> int:
        (type_id,) = self.ids("STRUCT", struct_name)
        bits = 0
        for part in path.split("."):
            found = self.find(type_id, part)
            assert found is not None, f"bpftool knows no {struct_name}.{path}"
            bits += found[0]
            type_id = self.strip(found[1])
        return bits // 8


def _parse_bpftool(text: str) -> _Dump:
    types: dict[int, _Type] = {}
    current: _Type | None = None
    for line in text.splitlines():
        if match := _TYPE_LINE.match(line):
            rest = match[4]
            size = re.search(r" size=(\d+)", rest)
            target = re.search(r" type_id=(\d+)", rest)
            current = _Type(
                kind=match[2],
                name=match[3],
                size=int(size[1]) if size else None,
                target=int(target[1]) if target else None,
            )
            types[int(match[1])] = current
        elif (
            current is not None
            and current.kind in ("STRUCT", "UNION")
            and (member := _MEMBER_LINE.match(line))
        ):
            current.members.append((member[1], int(member[2]), int(member[3]), int(member[4] or 0)))
    return _Dump(types)


@pytest.fixture(scope="module")
def dump() -> _Dump:
    bpftool = shutil.which("bpftool", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if bpftool is None:
        pytest.fail("bpftool is needed as the oracle for these tests")
    out = subprocess.run(
        [bpftool, "btf", "dump", "file", str(VMLINUX), "format", "raw"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return _parse_bpftool(out)


@pytest.fixture(scope="module")
def btf() -> Btf:
    return Btf.load(VMLINUX)


pytestmark = pytest.mark.needs_btf


def test_indexes_every_type(btf: Btf, dump: _Dump) -> None:
    assert len(btf) == max(dump.types)


@pytest.mark.parametrize(
    ("struct_name", "path"),
    [
        ("task_struct", "nsproxy"),
        ("task_struct", "tgid"),
        ("task_struct", "real_cred"),
        ("cred", "uid.val"),  # kuid_t: a typedef of an anonymous struct
        ("cred", "cap_effective"),
        ("net", "ns.inum"),
        ("mnt_namespace", "ns.inum"),
        ("pid", "numbers"),  # flexible array member
        ("upid", "ns"),
    ],
)
def test_offsetof_matches_bpftool(btf: Btf, dump: _Dump, struct_name: str, path: str) -> None:
    assert btf.offsetof(struct_name, path) == dump.offsetof(struct_name, path)


def _anonymous_members(dump: _Dump, struct_name: str) -> list[str]:
    """Names reachable in *struct_name* only through anonymous struct/union members."""
    (type_id,) = dump.ids("STRUCT", struct_name)

    def walk(type_id: int, nested: bool) -> list[str]:
        names = []
        for member, member_type, _, bitfield in dump.types[type_id].members:
            inner = dump.strip(member_type)
            if member == "(anon)" and dump.types[inner].kind in ("STRUCT", "UNION"):
                names += walk(inner, nested=True)
            elif nested and not bitfield:
                names.append(member)
        return names

    return walk(type_id, nested=False)


@pytest.mark.parametrize("struct_name", ["ns_common", "pid", "page", "sk_buff"])
def test_finds_members_of_anonymous_structs_and_unions(
    btf: Btf, dump: _Dump, struct_name: str
) -> None:
    names = _anonymous_members(dump, struct_name)
    assert names, f"{struct_name} has no anonymous members on this kernel: pick another struct"
    for name in names:  # ns_common.ns_id sits in a struct inside a union: two levels down
        assert btf.offsetof(struct_name, name) == dump.offsetof(struct_name, name), name


def test_agrees_with_bpftool_across_the_whole_file(btf: Btf, dump: _Dump) -> None:
    # Any kind skipped with the wrong length would shift every later type, so sample structs
    # spread over all ids rather than only the ones the probes need.
    names = Counter(t.name for t in dump.types.values() if t.kind in ("STRUCT", "UNION"))
    unique = [
        t
        for t in dump.types.values()
        if t.kind == "STRUCT" and t.name != "(anon)" and names[t.name] == 1
    ]
    checked = 0
    for t in unique[::10]:
        assert btf.sizeof(t.name) == t.size, t.name
        for member, _, bits, bitfield in t.members:
            if member != "(anon)" and not bitfield:
                assert btf.offsetof(t.name, member) == bits // 8, f"{t.name}.{member}"
                checked += 1
    assert checked > 1000


def test_func_id_matches_bpftool(btf: Btf, dump: _Dump) -> None:
    funcs = [(i, t.name) for i, t in sorted(dump.types.items()) if t.kind == "FUNC"]
    first: dict[str, int] = {}
    for type_id, name in funcs:
        first.setdefault(name, type_id)
    for _, name in funcs[::997]:
        assert btf.func_id(name) == first[name], name
    assert btf.func_id("auditd_no_such_function") is None


def test_sizeof_of_known_and_unknown_structs(btf: Btf, dump: _Dump) -> None:
    (upid,) = dump.ids("STRUCT", "upid")
    assert btf.sizeof("upid") == dump.types[upid].size
    assert btf.sizeof("task_struct") > 0
    with pytest.raises(BtfError, match="auditd_no_such_struct"):
        btf.sizeof("auditd_no_such_struct")


def _first_bitfield(dump: _Dump, struct_name: str) -> str:
    (type_id,) = dump.ids("STRUCT", struct_name)
    return next(m[0] for m in dump.types[type_id].members if m[3])


@pytest.mark.parametrize(
    ("struct_name", "path", "words"),
    [
        ("auditd_no_such_struct", "x", ["auditd_no_such_struct"]),
        ("task_struct", "auditd_no_such_member", ["task_struct", "auditd_no_such_member"]),
        ("net", "ns.auditd_no_such_member", ["net", "ns.auditd_no_such_member"]),
        ("task_struct", "nsproxy.uts_ns", ["task_struct", "'nsproxy'", "pointer"]),
        ("task_struct", "tgid.x", ["task_struct", "'tgid'", "not a struct"]),
        ("task_struct", "", ["task_struct", "member path"]),
        ("task_struct", "nsproxy..x", ["task_struct", "member path"]),
    ],
)
def test_offsetof_errors_name_struct_and_member(
    btf: Btf, struct_name: str, path: str, words: list[str]
) -> None:
    with pytest.raises(BtfError) as raised:
        btf.offsetof(struct_name, path)
    message = str(raised.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_bitfields_have_no_byte_offset(btf: Btf, dump: _Dump) -> None:
    member = _first_bitfield(dump, "task_struct")
    with pytest.raises(BtfError, match=rf"task_struct member '{member}' is a \d+-bit bitfield"):
        btf.offsetof("task_struct", member)


def test_sizeof_unknown_struct(btf: Btf) -> None:
    with pytest.raises(BtfError, match="auditd_no_such_struct"):
        btf.sizeof("auditd_no_such_struct")


def _header(**fields: int) -> bytes:
    values = {
        "magic": 0xEB9F,
        "hdr_len": 24,
        "type_off": 0,
        "type_len": 0,
        "str_off": 0,
        "str_len": 1,
    } | fields
    return struct.pack(
        "<HBBIIIII",
        values["magic"],
        1,
        0,
        values["hdr_len"],
        values["type_off"],
        values["type_len"],
        values["str_off"],
        values["str_len"],
    )


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "cannot read BTF"),
        (b"", "too short"),
        (b"\x7fELF" + bytes(60), "not BTF"),
        (_header(type_len=4000) + b"\0", "beyond the end"),
        # One INT record whose 4-byte encoding is missing.
        (_header(type_len=12, str_off=12) + struct.pack("<III", 0, 1 << 24, 4) + b"\0", "overruns"),
        (
            _header(type_len=12, str_off=12) + struct.pack("<III", 0, 31 << 24, 4) + b"\0",
            "unknown kind 31",
        ),
    ],
)
def test_load_rejects_missing_and_malformed_files(
    tmp_path: Path, content: bytes | None, match: str
) -> None:
    path = tmp_path / "vmlinux"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BtfError, match=match) as raised:
        Btf.load(path)
    assert str(path) in str(raised.value)


def test_load_rejects_a_directory(tmp_path: Path) -> None:
    with pytest.raises(BtfError, match="cannot read BTF"):
        Btf.load(tmp_path)
