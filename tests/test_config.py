"""Config loading: defaults, validation, and errors that point at file, line and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from auditd.config import schema as config
from auditd.config.schema import Config
from auditd.config.yamlfile import ConfigError

DEFAULT_FILE = Path(config.__file__).with_name("default-config.yaml")


def test_shipped_default_file_is_the_builtin_default() -> None:
    assert config.load(DEFAULT_FILE) == Config()


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("# nothing\n")
    assert config.load(f) == Config()


def test_values_are_typed() -> None:
    c = config.loads("metrics:\n  listen: '[::1]:9999'\nhousekeeping_interval: 2\n")
    assert c.metrics.listen == "[::1]:9999"
    assert c.housekeeping_interval == 2.0
    assert isinstance(c.housekeeping_interval, float)


@pytest.mark.parametrize(
    ("text", "line", "key", "says"),
    [
        (
            "log:\n  level: info\n  colour: red\n",
            3,
            "log.colour",
            "unknown key; valid keys here: format, level",
        ),
        ("probes:\n  denial: {}\n", 2, "probes.denial", "unknown key"),
        ("queue_size: lots\n", 1, "queue_size", "expected an integer, got a string 'lots'"),
        ("queue_size: true\n", 1, "queue_size", "expected an integer, got a boolean"),
        (
            "probes:\n  denials:\n    enabled: 1\n",
            3,
            "probes.denials.enabled",
            "expected true or false",
        ),
        ("log:\n  level: loud\n", 2, "log.level", "expected one of debug, info, warning, error"),
        ("probes:\n  ringbuf_pages: 3\n", 2, "probes.ringbuf_pages", "power of two"),
        ("metrics:\n  listen: localhost\n", 2, "metrics.listen", "expected an address"),
        ("metrics: 5\n", 1, "metrics", "expected a mapping"),
        ("log:\n  level: [info]\n", 2, "log.level", "got a list"),
        ("queue_size: 100\nqueue_size: 200\n", 2, "queue_size", "given twice"),
        ("- a\n- b\n", 1, "(top level)", "expected a mapping"),
    ],
)
def test_errors_name_file_line_and_key(text: str, line: int, key: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.loads(text, "bad.yaml")
    err = info.value
    assert (err.file, err.line, err.key) == ("bad.yaml", line, key)
    assert says in err.message
    assert str(err).startswith(f"bad.yaml:{line}: {key}: ")
    assert "\n" not in str(err)


def test_invalid_yaml_names_the_line() -> None:
    with pytest.raises(ConfigError) as info:
        config.loads("log:\n  level: info\n bad: [\n", "broken.yaml")
    assert info.value.line == 3
    assert str(info.value).startswith("broken.yaml:3: invalid YAML")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read: No such file"):
        config.load(tmp_path / "nope.yaml")


@pytest.mark.parametrize("listen", ["0.0.0.0:1", ":19731", "[::]:80", "127.0.0.1:65535"])
def test_listen_forms(listen: str) -> None:
    host, port = config.parse_listen(listen)
    assert port == int(listen.rsplit(":", 1)[1])
    assert host


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        (
            "unknown-key.yaml",
            "metrics:\n  listen: ':1'\n  lisen: ':2'\n",
            ":3: metrics.lisen: unknown key",
        ),
        (
            "wrong-type.yaml",
            "log:\n  level: info\nqueue_size: '100'\n",
            ":3: queue_size: expected an integer",
        ),
        ("invalid.yaml", "log: {level: info\n", ":2: invalid YAML"),
    ],
)
def test_cli_one_line_error_and_exit_2(tmp_path: Path, name: str, text: str, says: str) -> None:
    """`run` and `check-config` turn a bad file into one line on stderr and exit code 2."""
    f = tmp_path / name
    f.write_text(text)
    for argv in (["run", "--config", str(f)], ["check-config", str(f)]):
        proc = subprocess.run(
            [sys.executable, "-m", "auditd", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"bpf-auditd: {f}"), lines[0]
        assert says in lines[0], lines[0]
        assert "Traceback" not in proc.stderr
