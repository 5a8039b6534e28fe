"""The LinuxKit service, run the way LinuxKit runs it, proven from the host.

- The image root is built by the package's own recipe (linuxkit/pkg/bpf-auditd/mkroot, which its
  Dockerfile runs): `mkroot base` is cached on this machine (tests/_roots.py), `mkroot daemon`
  puts the current tree on top of it, in an overlay, on every run.
- The service entry of linuxkit/bpf-auditd.yml and the package's label (build.yml `config:`)
  become the OCI spec by LinuxKit's rules (linuxkit/lk2oci.py), the command from the
  Dockerfile's CMD.
- What LinuxKit does around the bundle is done the same way: the root is bound read-only on the
  bundle's rootfs (the root is read-only when LinuxKit starts services, so a missing mount point
  fails here as it would there) and runtime.mkdir is made before the start. `runc run` then runs
  the bundle, as LinuxKit's init runs onboot containers and containerd's shim runs services.
- Test-only, and nothing else: the two host directories the service writes are moved into the
  test's directory (the host's own /var/lib/bpf-auditd is left alone), and a config file is
  bound over /etc/bpf-auditd/config.yaml: a free metrics port (other daemons on this machine use
  19731), and MQTT to a closed port so that alerts are spooled in the state directory.

The kernel headers come in through the YAML's /lib/modules and /usr/src binds (the image has
none), tracefs through its mount. Not reproduced here: Alpine's packages (unreachable; the image
is Debian), a LinuxKit kernel (no BTF), containerd and memlogd, `linuxkit build` itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from _daemon import bpf_objects_of, bpf_programs, value
from _roots import MKROOT, linuxkit_base, run, size_bytes, warm
from _workload import NOBODY, denied_opens, scratch_cgroup, secret_file

from auditd.model.capabilities import NUMBERS

pytestmark = [
    pytest.mark.needs_root,
    pytest.mark.needs_bpf,
    pytest.mark.needs_containers("linuxkit"),  # the root it boots (tests/_roots.py)
    # A cold cache builds the root first (about a minute).
    pytest.mark.timeout(900),
]

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "linuxkit" / "pkg" / "bpf-auditd"
IMAGE_YML = ROOT / "linuxkit" / "bpf-auditd.yml"
SERVICE = "bpf-auditd"
WRITTEN = ("/var/lib/bpf-auditd", "/run/bpf-auditd")
CONFIG = "/etc/bpf-auditd/config.yaml"
DENIALS = 5


def image_command() -> list[str]:
    """The image's command: the CMD of the Dockerfile's final stage."""
    text = (PKG / "Dockerfile").read_text()
    final = text[text.rindex("FROM scratch") :]
    command: list[str] = json.loads(re.findall(r"^CMD (\[.*\])$", final, re.MULTILINE)[-1])
    return command


def build_context(dest: Path) -> Path:
    """The daemon's source as the Docker build sees it (build.yml extra-sources), under
    dest/src."""
    for entry in yaml.safe_load((PKG / "build.yml").read_text())["extra-sources"]:
        src, dst = entry.split(":")
        source, target = (PKG / src).resolve(), dest / dst.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    return dest / "src"


@pytest.fixture(scope="module", autouse=True)
def _roots_side_by_side(request: pytest.FixtureRequest) -> None:
    warm(request.session.items)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The service's image root: the cached base, the daemon built on it now (an overlay)."""
    work = tmp_path_factory.mktemp("linuxkit-image")
    with linuxkit_base() as base:
        root = work / "root"
        for d in ("upper", "work", "root"):
            (work / d).mkdir()
        layers = f"lowerdir={base},upperdir={work / 'upper'},workdir={work / 'work'}"
        run(["mount", "-t", "overlay", "overlay", "-o", layers, str(root)])
        try:
            started = time.monotonic()
            run([str(MKROOT), "daemon", str(root), str(build_context(work / "context"))])
            print(f"daemon layer built in {time.monotonic() - started:.1f}s")
            yield root
        finally:
            subprocess.run(["umount", str(root)], check=False)


def convert(bundle: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """config.json and runtime.json of the service, by linuxkit/lk2oci.py's command line."""
    run([
        sys.executable,
        str(ROOT / "linuxkit" / "lk2oci.py"), str(IMAGE_YML), SERVICE, str(bundle),
        "--label", str(PKG / "build.yml"), "--cmd", json.dumps(image_command()),
    ])  # fmt: skip
    spec = json.loads((bundle / "config.json").read_text())
    runtime = json.loads((bundle / "runtime.json").read_text())
    return spec, runtime


def test_image_root_holds_the_daemon_and_nothing_it_does_not_need(
    image_root: Path, tmp_path: Path
) -> None:
    root = image_root
    assert os.readlink(root / "usr/local/bin/bpf-auditd") == "/opt/bpf-auditd/bin/bpf-auditd"
    assert (root / "opt/bpf-auditd/bin/bpf-auditd").is_file()
    assert (root / CONFIG.lstrip("/")).read_text() == (
        ROOT / "auditd/config/default-config.yaml"
    ).read_text()
    # No compiler, package manager or pip; no apt lists, caches, logs, docs or tests.
    for pattern in ("*gcc*", "cc", "c++", "clang*", "ld", "as", "apt*", "pip*"):
        assert not list((root / "usr/bin").glob(pattern)), pattern
    assert not (root / "usr/lib/gcc").exists()
    assert not list(root.glob("usr/lib/python3*/*-packages/pip"))
    assert not list(root.glob("opt/bpf-auditd/lib/python3*/site-packages/pip"))
    assert not list(root.glob("opt/bpf-auditd/lib/python3*/site-packages/tests"))
    for directory in ("var/lib/apt/lists", "var/cache", "var/log", "tmp", "root/.cache"):
        files = [p for p in (root / directory).rglob("*") if p.is_file() and p.stat().st_size]
        assert files == [], directory
    assert {p.name for p in (root / "usr/share/doc").rglob("*") if p.is_file()} <= {"copyright"}
    for directory in ("usr/share/man", "usr/share/locale"):
        assert not [p for p in (root / directory).rglob("*") if p.is_file()], directory
    # The headers are the running kernel's, bound in by the YAML: the image has none.
    assert list((root / "lib/modules").iterdir()) == []
    assert list((root / "usr/src").iterdir()) == []
    # The root is read-only at run time: every mount point of the service must be there.
    spec, _ = convert(tmp_path)
    for mount in spec["mounts"]:
        destination = mount["destination"]
        if not destination.startswith(("/proc/", "/sys/", "/dev/")):
            assert (root / destination.lstrip("/")).exists(), f"no mount point {destination}"
    print(f"image root: {size_bytes(root) / 1e6:.0f} MB on disk")


# --- running it -----------------------------------------------------------------------------------


class Container:
    """`runc run` of the bundle; the service's output (JSON lines) kept as it comes."""

    def __init__(self, bundle: Path, cid: str) -> None:
        self.cid = cid
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            ["runc", "run", "--bundle", str(bundle), cid],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw.append(line.rstrip("\n"))
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(line))

    def wait_for(self, what: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = next((line for line in list(self.lines) if what(line)), None)
            if found is not None:
                return found
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._reader.join(timeout=2)
                tail = "\n".join(self.raw[-20:])
                raise AssertionError(
                    f"not in the service's output (exit {self.proc.poll()}):\n{tail}"
                )
            time.sleep(0.05)

    def event(self, name: str, timeout: float = 30) -> dict[str, Any]:
        return self.wait_for(lambda line: line.get("event") == name, timeout)

    def pid(self) -> int:
        state = run(["runc", "state", self.cid])
        return int(json.loads(state)["pid"])


def _cgroups_of(cid: str) -> list[Path]:
    """The cgroup directories runc made for the container, in every hierarchy."""
    top = Path("/sys/fs/cgroup")
    patterns = [cid, *("*/" * depth + cid for depth in range(1, 5))]
    return [p for pattern in patterns for p in top.glob(pattern) if p.is_dir()]


def _remove(container: Container) -> None:
    """Stop what is left, delete the container, remove its cgroups once they are empty (the
    daemon's perf-closer child may outlive it by seconds, in D state in synchronize_rcu)."""
    if container.proc.poll() is None:
        subprocess.run(["runc", "kill", container.cid, "KILL"], check=False, capture_output=True)
        container.proc.wait(timeout=30)
    subprocess.run(["runc", "delete", "--force", container.cid], check=False, capture_output=True)
    container._reader.join(timeout=5)
    if container.proc.stdout is not None:
        container.proc.stdout.close()
    deadline = time.monotonic() + 60
    for cgroup in sorted(_cgroups_of(container.cid), key=lambda p: -len(p.parts)):
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError):
                if not (cgroup / "cgroup.procs").read_text().strip():
                    with contextlib.suppress(OSError):
                        cgroup.rmdir()
            if not cgroup.exists():
                break
            time.sleep(0.1)
    assert not _cgroups_of(container.cid), "the container's cgroups did not empty within 60s"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


def _wait_metric(url: str, name: str, want: float, **labels: str) -> float | None:
    deadline, got = time.monotonic() + 20, None
    while time.monotonic() < deadline:
        got = value(_scrape(url), name, **labels)
        if got == want:
            break
        time.sleep(0.2)
    return got


def _in_cgroup(cgroup: Path, argv: list[str]) -> int:
    """Run argv in `cgroup` (a shell moves itself there, then becomes argv)."""
    enter = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup / "cgroup.procs")]
    return subprocess.run([*enter, *argv], capture_output=True, check=False).returncode


def _cap_mask(names: list[str]) -> int:
    return sum(1 << NUMBERS[name] for name in names)


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


@pytest.fixture
def bundle(image_root: Path, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """The service's bundle, prepared as LinuxKit's init prepares it; (bundle, host dir)."""
    bundle, host = tmp_path / "bundle", tmp_path / "host"
    spec, runtime = convert(bundle)
    # Test-only: the written host directories move into the test's own directory ...
    for mount in spec["mounts"]:
        if mount["type"] == "bind" and mount["source"] in WRITTEN:
            mount["source"] = str(host) + mount["source"]
    runtime["mkdir"] = [str(host) + d if d in WRITTEN else d for d in runtime["mkdir"]]
    # ... and a config of the test's own is bound over the image's.
    config = tmp_path / "config.yaml"
    config.write_text(
        f"metrics: {{listen: '127.0.0.1:{_free_port()}'}}\n"
        f"mqtt: {{url: 'mqtt://127.0.0.1:{_free_port()}', reconnect_max_delay: 1.0}}\n"
    )
    spec["mounts"].append({"destination": CONFIG, "type": "bind", "source": str(config),
                           "options": ["ro", "rbind"]})  # fmt: skip
    (bundle / "config.json").write_text(json.dumps(spec, indent=4))
    # LinuxKit's init (pkg/init/cmd/service/prepare.go): runtime.mkdir, absolute = on the host.
    assert runtime["mounts"] == [], "runtime.mounts: not prepared by this test"
    assert all(Path(d).is_absolute() for d in runtime["mkdir"])
    for directory in runtime["mkdir"]:
        Path(directory).mkdir(parents=True, exist_ok=True)
    # A read-only image (moby/build/image.go) is its own rootfs, read-only when services start.
    rootfs = bundle / "rootfs"
    rootfs.mkdir()
    run(["mount", "--bind", str(image_root), str(rootfs)])
    try:
        run(["mount", "-o", "remount,bind,ro", str(rootfs)])
        yield bundle, host
    finally:
        subprocess.run(["umount", str(rootfs)], check=False)


def test_service_runs_under_runc_and_is_proven_from_the_host(bundle: tuple[Path, Path]) -> None:
    path, host = bundle
    spec = json.loads((path / "config.json").read_text())
    cid = f"bpf-auditd-test-{uuid.uuid4().hex[:8]}"

    # --- run 1 ---
    container = Container(path, cid)
    try:
        ready = container.event("ready", timeout=120)
        ready_wall = time.monotonic() - container.started
        url = ready["metrics"]
        pid = container.pid()
        assert ready["pid"] == pid, "pid: host: the daemon runs under its host pid"
        # The spec as runc applied it: LinuxKit's capability sets, no new privileges, and the
        # YAML's binds and mounts in the daemon's mount namespace.
        status = _status(pid)
        caps = spec["process"]["capabilities"]
        assert int(status["CapEff"], 16) == _cap_mask(caps["effective"])
        assert int(status["CapBnd"], 16) == _cap_mask(caps["bounding"])
        assert int(status["CapAmb"], 16) == _cap_mask(caps["ambient"])
        assert status["NoNewPrivs"].strip() == "1"
        mountinfo = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        mounted = {line.split()[4] for line in mountinfo}
        assert {"/usr/src", "/sys/kernel/tracing", "/sys/fs/cgroup"} <= mounted
        assert {"/lib/modules", "/usr/lib/modules"} & mounted  # /lib is /usr/lib in the image
        progs, _ = bpf_objects_of(pid)
        assert progs, "the daemon's programs should be loaded while it runs"

        with scratch_cgroup("bpf-auditd-lk") as cgroup, secret_file() as secret:
            # Other sessions on this machine refuse opens in loops: count ours by our cgroup.
            _, refused = denied_opens(secret, DENIALS, cgroup)
            assert refused == DENIALS
            got = _wait_metric(url, "bpf_auditd_denials_total", DENIALS, service=cgroup.name,
                               syscall="openat", errno="EACCES")  # fmt: skip
            assert got == DENIALS
            assert _in_cgroup(cgroup, ["unshare", "-n", "true"]) == 0
            got = _wait_metric(
                url, "bpf_auditd_namespace_changes_total", 1,
                service=cgroup.name, op="unshare", type="net", result="success",
            )  # fmt: skip
            assert got == 1
            # uid 65534 refused CAP_SYS_ADMIN: the default policy's alert.
            nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
            assert _in_cgroup(cgroup, [*nobody, "unshare", "-m", "true"]) != 0
            alert = container.wait_for(
                lambda line: line.get("event") == "alert"
                and line["alert"]["service"] == cgroup.name, timeout=20,
            )["alert"]  # fmt: skip
            assert alert["rule"] == "denied-admin-capability"
            service = cgroup.name

        # SIGTERM (runc kill): stops within 2 s, none of its programs left.
        started = time.monotonic()
        run(["runc", "kill", cid, "TERM"])
        while Path(f"/proc/{pid}").exists() and time.monotonic() - started < 10:
            time.sleep(0.01)
        took = time.monotonic() - started
        left = progs & set(bpf_programs())
        assert container.proc.wait(timeout=30) == 0
        runc_took = time.monotonic() - started
    finally:
        _remove(container)
    assert took < 2.0, f"stop took {took:.2f}s"
    assert not left, f"programs still loaded after exit: {sorted(left)}"
    assert container.lines[-1]["event"] == "stopped"
    stopped = next(line for line in container.lines if line.get("event") == "mqtt_stopped")
    spooled = stopped["unacknowledged"]
    spool = sorted((host / "var/lib/bpf-auditd/mqtt-spool").glob("*.json"))
    assert len(spool) == spooled >= 1
    documents = [json.loads(p.read_text()) for p in spool]
    assert any((d["rule"], d["service"]) == ("denied-admin-capability", service) for d in documents)

    # --- run 2: the state directory survived ---
    container = Container(path, cid)
    try:
        loaded = container.event("mqtt_spool_loaded", timeout=120)
        container.event("ready", timeout=120)
        assert loaded["alerts"] == spooled
        run(["runc", "kill", cid, "TERM"])
        assert container.proc.wait(timeout=30) == 0
    finally:
        _remove(container)
    print(
        f"linuxkit/runc: ready {ready['start_s']}s after start ({ready_wall:.1f}s after runc run),"
        f" stopped {took:.2f}s after SIGTERM (runc run returned after {runc_took:.2f}s);"
        f" {spooled} spooled alert(s) carried into the second run"
    )
