"""Config, policy and web-config files built to break a loader: each is one `file[:line]: …`
line on stderr and exit 2, for check-config, check-policy and run — never a traceback, never a
hang (a FIFO as the file), never a number Python refuses to convert."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from auditd.commands import cli

# name → (writes the file at the path, the line the error names or None, words it says)
Make = Callable[[Path], None]


def _text(text: str) -> Make:
    return lambda p: p.write_text(text)


def _bytes(data: bytes) -> Make:
    return lambda p: p.write_bytes(data)


def _fifo(p: Path) -> None:
    os.mkfifo(p)


def _directory(p: Path) -> None:
    p.mkdir()


_ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(6)
)

HOSTILE: dict[str, tuple[Make, int | None, str]] = {
    # libyaml may see a flow collection's depth before we do: either says so.
    "deep-flow": (_text("a: " + "[" * 1000 + "]" * 1000 + "\n"), 1, "nest"),
    "deep-block": (
        _text("a:\n" + "".join("  " * i + "- \n" for i in range(1, 1000))),
        65,
        "nested deeper than 64",
    ),
    "deep-conditions": (
        _text("rules:\n  - name: r\n    match: " + "{not: " * 1000 + "{}" + "}" * 1000 + "\n"),
        3,
        "nested deeper than 64",
    ),
    "5000-digit-integer": (_text("queue_size: " + "7" * 5000 + "\n"), 1, "number of 5000"),
    "fifo": (_fifo, None, "not a regular file (a FIFO)"),
    "directory": (_directory, None, "not a regular file (a directory)"),
    "nul-byte": (_bytes(b"log:\n  level: in\0fo\n"), 2, "character U+0000 is not allowed"),
    "not-utf8": (_bytes(b"log:\n  level: info\n# \xff\n"), 3, "not UTF-8 text (byte 0xff)"),
    "alias-bomb": (_text(_ALIAS_BOMB), 5, "aliases repeat more than 100000 values"),
    "no-such-date": (_text("queue_size: 2024-13-45\n"), 1, "cannot read the value"),
    "python-tag": (_text("queue_size: !!python/name:os.system x\n"), 1, "cannot read the value"),
    "two-documents": (_text("queue_size: 100\n---\nqueue_size: 200\n"), 2, "single document"),
    "self-alias": (_text("a: &a [*a]\n"), 1, "unknown alias *a"),
}


def _check(path: Path, line: int | None, says: str, err: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    where = f"{path}:{line}: " if line is not None else f"{path}: "
    assert lines[0].startswith(f"bpf-auditd: {where}"), lines[0]
    assert says in lines[0], lines[0]


@pytest.mark.parametrize("name", HOSTILE)
@pytest.mark.parametrize("command", ["check-config", "check-policy", "web-config"])
def test_check_commands_answer_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, command: str
) -> None:
    make, line, says = HOSTILE[name]
    f = tmp_path / f"{name}.yaml"
    make(f)
    if command == "web-config":  # through the daemon config that names it
        config = tmp_path / "config.yaml"
        config.write_text(f"metrics:\n  web_config: {f.name}\n")
        argv = ["check-config", str(config)]
    else:
        argv = [command, str(f)]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    _check(f, line, says, err)


@pytest.mark.parametrize("name", ["deep-flow", "5000-digit-integer", "fifo", "nul-byte"])
def test_run_answers_in_one_line_before_loading_anything(tmp_path: Path, name: str) -> None:
    """As processes, all at once: `run --config` and `run --policy` with each of the issue's
    files. A hang (the FIFO, before) fails on the timeout."""
    make, line, says = HOSTILE[name]
    f = tmp_path / f"{name}.yaml"
    make(f)
    runs = {
        option: subprocess.Popen(
            [sys.executable, "-m", "auditd", "run", option, str(f)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for option in ("--config", "--policy")
    }
    errors = {}
    for option, proc in runs.items():
        try:
            errors[option] = proc.communicate(timeout=30)[1]
        except subprocess.TimeoutExpired:
            errors[option] = "(still running after 30 s)"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for option, proc in runs.items():
        err = errors[option]
        assert proc.returncode == 2, (option, err)
        assert "Traceback" not in err
        _check(f, line, says, err)


def test_a_file_over_the_size_bound_is_refused_unread(tmp_path: Path) -> None:
    from auditd.config import yamltext

    f = tmp_path / "huge.yaml"
    with f.open("wb") as out:
        out.truncate(yamltext.MAX_FILE_BYTES + 1)  # sparse: costs no disk
    assert cli.main(["check-config", str(f)]) == 2
