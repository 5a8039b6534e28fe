"""Property tests (Hypothesis) of what the kernel hands us: audit record text (parser and
assembler) never raises; ring-buffer bytes decode to an event or raise ValueError, nothing
else. Bounded: a few hundred examples each, no example database written."""

from __future__ import annotations

import ctypes
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from auditd.audit.assembler import Assembler
from auditd.audit.records import RecordType, parse_fields, parse_record, split_header
from auditd.signals.denials import decode as denials
from auditd.signals.namespaces import decode as namespaces
from probes.denials import DenialRecord
from probes.namespaces import NamespaceRecord

FUZZ = settings(max_examples=300, deadline=timedelta(seconds=2), database=None)

TYPES = [int(t) for t in RecordType] + [0, 1005, 1329, 65535, -1]
# Pieces of real records, so generated text reaches past the first check.
PIECES = [
    "audit(", "1700000000.123:42", "): ", "type=", "pid=", "uid=", "comm=", "exe=", "name=",
    "path=", "syscall=", "success=no", "exit=-13", "arch=c000003e", "domain=", "blockers=",
    "fs.read_file", "avc:  denied  { read } for ", "scontext=", "tcontext=", "tclass=",
    "sig=", "code=0x", "'", '"', "=", " ", "\x00", "\ud800", "ff" * 8, "4142", "0x", "9" * 5000,
    "(null)", "?", "res=0", "op=set audit_pid=", "old=", "{", "}", ":",
]  # fmt: skip
record_text = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=6)), max_size=30).map(
    "".join
)


@FUZZ
@given(st.sampled_from(TYPES), st.one_of(record_text, st.text(max_size=300)))
def test_a_record_parses_to_a_value_whatever_its_text(record_type: int, text: str) -> None:
    split = split_header(text)
    body = split[1] if split is not None else text
    parse_fields(body)
    parse_record(record_type, body)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(TYPES),
            st.one_of(
                st.builds(
                    lambda serial, body: f"audit(1700000000.{serial % 1000:03d}:{serial}): {body}",
                    st.integers(0, 5),
                    record_text,
                ),
                record_text,
            ),
        ),
        max_size=30,
    ),
    st.floats(0.001, 10),
)
def test_the_assembler_groups_any_records_and_parses_every_event(
    records: list[tuple[int, str]], flush_after: float
) -> None:
    assembler = Assembler(flush_after, max_pending=4)
    now = 0.0
    events = []
    for record_type, text in records:
        now += 0.01
        events += assembler.add(record_type, text, now)
        events += assembler.expire(now)
    events += assembler.flush()
    for raw in events:
        raw.parse()
    assert assembler.next_deadline() is None


def _record_bytes(kind: type[ctypes.Structure]) -> st.SearchStrategy[bytes]:
    size = ctypes.sizeof(kind)
    return st.one_of(
        st.binary(min_size=size, max_size=size + 16),  # a whole record, any content
        st.binary(max_size=size - 1),  # short: must be a ValueError
    )


@FUZZ
@given(_record_bytes(DenialRecord), st.integers(-(2**63), 2**63))
def test_denial_records_decode_or_raise_value_error(data: bytes, offset: int) -> None:
    try:
        decoded = denials.decode(data, offset)
    except ValueError:
        return
    decoded.denial.log_fields()


@FUZZ
@given(_record_bytes(NamespaceRecord), st.integers(-(2**63), 2**63))
def test_namespace_records_decode_or_raise_value_error(data: bytes, offset: int) -> None:
    try:
        decoded = namespaces.decode(data, offset)
    except ValueError:
        return
    decoded.change.log_fields()
