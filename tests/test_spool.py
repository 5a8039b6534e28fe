"""The MQTT spool on disk: order, atomic files, leftovers of a killed writer, one owner."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from exporters.spool import Spool, SpoolError


def test_records_come_back_in_sequence_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    assert spool.open().records == []
    assert spool.write([(10, b"ten"), (2, b"two"), (300, b"three hundred")]) == {}
    spool.close()
    again = Spool(tmp_path / "s")
    loaded = again.open()
    assert loaded.records == [(2, b"two"), (10, b"ten"), (300, b"three hundred")]
    assert loaded.unreadable == 0
    again.close()


def test_removed_records_stay_removed_and_missing_ones_are_fine(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    spool.write([(1, b"a"), (2, b"b"), (3, b"c")])
    assert spool.remove([1, 3, 99]) == 0
    spool.close()
    spool = Spool(tmp_path)
    assert spool.open().records == [(2, b"b")]
    spool.close()


def test_a_half_written_file_is_discarded_and_an_empty_one_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=True)
    spool.open()
    spool.write([(1, b"whole")])
    spool.close()
    # What a writer killed before its rename leaves behind, and a file truncated by the disk.
    (tmp_path / f".{spool.path(2).name}").write_bytes(b'{"half')
    spool.path(3).write_bytes(b"")
    (tmp_path / "README").write_text("not ours")
    spool = Spool(tmp_path)
    loaded = spool.open()
    assert loaded.records == [(1, b"whole")]
    assert loaded.unreadable == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [spool.path(1).name, "README", "lock"]
    spool.close()


def test_modes_keep_alerts_private(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "private")
    spool.open()
    spool.write([(1, b"x")])
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700
    assert stat.S_IMODE(spool.path(1).stat().st_mode) == 0o600
    spool.close()


def test_a_second_daemon_cannot_share_the_spool(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    first.open()
    with pytest.raises(SpoolError, match="in use by another bpf-auditd"):
        Spool(tmp_path).open()
    first.close()
    second = Spool(tmp_path)
    second.open()
    second.close()


def test_unwritable_directory_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SpoolError, match=r"cannot use spool .*file/spool: Not a directory"):
        Spool(blocker / "spool").open()
