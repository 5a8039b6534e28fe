"""`bpf-auditd policy publish` from the command line: a repository hosts can update from, and the
refusals that keep a publisher from writing one they would refuse (bad policy, too few keys,
a root rotation without the old key). The daemon-side wiring of `policy.tuf`, and python-tuf
staying out of a daemon that does not use it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from auditd.commands import cli
from auditd.config.schema import Config, TufConfig
from auditd.config.yamlfile import ConfigError
from auditd.daemon import wiring
from auditd.daemon.daemon import Daemon
from auditd.kernel.paths import KernelPaths
from auditd.policy.fleet.client import TufPolicySource

POLICY = "version: 1\nrules:\n  - name: {name}\n    match: {{kind: denial}}\n"
ROOT = Path(__file__).resolve().parent.parent


def publish(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run `bpf-auditd policy publish ARGV`; (exit code, stdout + stderr)."""
    code = cli.main(["policy", "publish", *argv])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture
def repo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """Keys in tmp/keys (root, two targets with threshold 2, snapshot, timestamp); a repository
    in tmp/repo."""
    keys = tmp_path / "keys"
    names = ["root-1", "targets-1", "targets-2", "snapshot", "timestamp"]
    code, out = publish(capsys, "keygen", *(str(keys / f"{n}.pem") for n in names))
    assert code == 0, out
    assert out.count("ed25519 key id") == 5
    assert all((keys / f"{n}.pem").stat().st_mode & 0o777 == 0o600 for n in names)
    code, out = publish(
        capsys, "init", str(tmp_path / "repo"), "--root", str(keys / "root-1.pem"),
        "--targets", str(keys / "targets-1.pem"), "--targets", str(keys / "targets-2.pem"),
        "--snapshot", str(keys / "snapshot.pem"), "--timestamp", str(keys / "timestamp.pem"),
        "--threshold", "targets=2",
    )  # fmt: skip
    assert code == 0, out
    return tmp_path / "repo"


def served(repo: Path) -> set[str]:
    return {str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()}


def test_a_published_policy_is_what_hosts_apply(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from _tuf_repo import StaticServer

    policy = tmp_path / "web.yaml"
    policy.write_text(POLICY.format(name="web-v1"))
    keys = str(tmp_path / "keys")
    code, out = publish(capsys, "add", str(repo), str(policy), "--name", "policies/web.yaml",
                        "--key", keys)  # fmt: skip
    assert code == 0, out
    assert "1 rules" in out
    assert "targets v2, timestamp v2" in out
    code, out = publish(capsys, "timestamp", str(repo), "--key", keys, "--snapshot")
    assert (code, out.split(",")[0]) == (0, "timestamp v3")
    server = StaticServer(repo).start()
    try:
        pinned = (repo / "metadata" / "1.root.json").read_bytes()
        client = TufPolicySource(
            server.url, pinned, "policies/web.yaml", tmp_path / "state", timeout=5
        )
        outcome = client.update(None)
    finally:
        server.stop()
    assert outcome.reason is None, outcome
    assert outcome.policy is not None
    assert [r.name for r in outcome.policy.rules] == ["web-v1"]


def test_a_policy_check_policy_refuses_is_not_published(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = served(repo)
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - name: x\n    matc: {kind: denial}\n")
    code, out = publish(capsys, "add", str(repo), str(bad), "--name", "policies/web.yaml",
                        "--key", str(tmp_path / "keys"))  # fmt: skip
    assert code == 2
    assert (
        out == f"bpf-auditd: {bad}:4: rules[0].matc: unknown key; valid keys here: cooldown, "
        "dedup, description, enabled, match, name, rate_limit, severity, threshold, unless\n"
    )
    assert served(repo) == before


def test_too_few_targets_keys_write_nothing(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = served(repo)
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY.format(name="p"))
    keys = tmp_path / "keys"
    code, out = publish(capsys, "add", str(repo), str(policy), "--name", "policies/web.yaml",
                        "--key", str(keys / "targets-1.pem"), "--key", str(keys / "snapshot.pem"),
                        "--key", str(keys / "timestamp.pem"))  # fmt: skip
    assert code == 2
    assert "targets would be signed by 1/2 of its keys" in out
    assert served(repo) == before


def test_root_rotation_needs_the_old_and_the_new_root_key(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    assert publish(capsys, "keygen", str(keys / "root-2.pem"))[0] == 0
    before = served(repo)
    new, old = str(keys / "root-2.pem"), str(keys / "root-1.pem")
    rotate = ["rotate", str(repo), "--role", "root", "--add", new, "--revoke", old]
    code, out = publish(capsys, *rotate, "--key", new)
    assert code == 2
    assert "signed by 0/1 keys of root v1 and 1/1 of its own" in out
    assert served(repo) == before
    code, out = publish(capsys, *rotate, "--key", new, "--key", old)
    assert code == 0, out
    assert out.startswith("root v2: root keys ")
    assert (repo / "metadata" / "2.root.json").exists()


def test_key_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "k.pem"
    assert publish(capsys, "keygen", str(key))[0] == 0
    code, out = publish(capsys, "keygen", str(key))
    assert (code, out) == (2, f"bpf-auditd: {key}: exists; not overwriting a key\n")
    # Encrypted with a passphrase from the environment, never from the command line.
    os.environ["BPF_AUDITD_KEY_PASSPHRASE"] = "correct horse"
    try:
        assert publish(capsys, "keygen", str(tmp_path / "enc.pem"))[0] == 0
    finally:
        del os.environ["BPF_AUDITD_KEY_PASSPHRASE"]
    assert b"ENCRYPTED" in (tmp_path / "enc.pem").read_bytes()
    others = ["--targets", str(key), "--snapshot", str(key), "--timestamp", str(key)]
    code, out = publish(
        capsys, "init", str(tmp_path / "r"), "--root", str(tmp_path / "enc.pem"), *others
    )
    assert (code, out) == (
        2, f"bpf-auditd: {tmp_path / 'enc.pem'}: encrypted key; set BPF_AUDITD_KEY_PASSPHRASE\n"
    )  # fmt: skip
    # openssl's ed25519 keys are the same format; other kinds are refused.
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(tmp_path / "o.pem")],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-out", str(tmp_path / "ec.pem")],
                   check=True, capture_output=True)  # fmt: skip
    code, out = publish(capsys, "init", str(tmp_path / "r"), "--root", str(tmp_path / "o.pem"),
                        "--targets", str(tmp_path / "ec.pem"), "--snapshot", str(key),
                        "--timestamp", str(key))  # fmt: skip
    assert (code, out) == (
        2, f"bpf-auditd: {tmp_path / 'ec.pem'}: not an ed25519 key (the only kind hosts verify)\n"
    )  # fmt: skip


def test_arguments_are_checked(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY.format(name="p"))
    keys = str(tmp_path / "keys")
    code, out = publish(capsys, "add", str(repo), str(policy), "--name", "../etc/x", "--key", keys)
    assert code == 2
    assert "--name: expected a relative target name" in out
    with pytest.raises(SystemExit) as exit_:
        cli.main(
            ["policy", "publish", "timestamp", str(repo), "--key", keys, "--expires", "timestamp=0"]
        )
    assert exit_.value.code == 2
    assert "expected a lifetime above 0" in capsys.readouterr().err


# -- the daemon's side ---------------------------------------------------------------------


def _tuf_config(tmp_path: Path, root: Path) -> Config:
    tuf = TufConfig(url="http://127.0.0.1:1", root=str(root), target="policies/web.yaml")
    return dataclasses.replace(
        Config(),
        policy=dataclasses.replace(Config().policy, tuf=tuf),
        state_dir=str(tmp_path / "state"),
    )


def test_run_gets_a_policy_feed_and_its_metrics_learn_does_not(repo: Path, tmp_path: Path) -> None:
    config = _tuf_config(tmp_path, repo / "metadata" / "1.root.json")
    parts = wiring.build(config, None, KernelPaths())
    assert parts.policy_feed is not None
    assert parts.policy_feed in parts.telemetry
    families = {f.name: f for f in Daemon(config, None, KernelPaths(), parts).declared()}
    assert {"bpf_auditd_policy_updates", "bpf_auditd_policy_update_refusals"} <= set(families)
    assert not any("host" in f.labels for f in families.values())  # `instance` names the host
    learning = wiring.build(config, None, KernelPaths(), evaluate=lambda e: [], alert_sinks=False)
    assert learning.policy_feed is None


def test_an_unusable_pinned_root_stops_start_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root.json"
    root.write_text('{"signed": {}}')
    with pytest.raises(ConfigError, match=r"root\.json: policy\.tuf\.root: not a TUF root"):
        wiring.build(_tuf_config(tmp_path, root), None, KernelPaths())
    config = tmp_path / "c.yaml"
    config.write_text(
        "policy:\n  tuf: {url: 'http://127.0.0.1:1', root: missing.json, target: p.yaml}\n"
    )
    assert cli.main(["check-config", str(config)]) == 2
    assert capsys.readouterr().err == (
        f"bpf-auditd: {tmp_path / 'missing.json'}: policy.tuf.root: cannot read: "
        "No such file or directory\n"
    )


def test_python_tuf_stays_out_of_a_daemon_without_policy_tuf() -> None:
    """Imported only when `policy.tuf` is set (tuf, securesystemslib, urllib3 and the stdlib
    they pull in: about 5 MB of the daemon's memory)."""
    code = (
        "import sys\n"
        "from auditd.commands import cli\n"
        "from auditd.config.schema import Config\n"
        "from auditd.daemon import wiring\n"
        "from auditd.daemon.daemon import Daemon\n"
        "from auditd.kernel.paths import KernelPaths\n"
        "cli.parser()\n"
        "wiring.build(Config(), None, KernelPaths())\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in\n"
        "                ('tuf', 'securesystemslib', 'urllib3', 'cryptography'))\n"
        "print(loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT)  # fmt: skip
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
