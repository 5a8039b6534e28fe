"""Soak: the daemon under an hour of mixed load, sampled every 10 s; not part of the test suite.

Load, each part in a cgroup of its own (so each is a service of its own):
  - refusals: a uid-65534 process refused a secret 50 times a second (repeats: deduplicated), and
    every 2 s a file of a new name (each one alerts, through MQTT);
  - Landlock: a Landlock-restricted process refused a read every 5 s;
  - namespaces: a process unsharing a UTS namespace and setns'ing back every 0.2 s, and a burst
    of 2,000 unshares every minute;
  - allocations and cgroups: pipe and file churn, and a short-lived cgroup with a process in it
    every second;
  - a broker outage of 30 s every 5 minutes (alerts wait in the spool), a SIGHUP reload every
    minute, and a /metrics scrape every second.
Every 10 s: the daemon's RSS, CPU (% of one core), open fds, every drop counter, alerts raised,
published, acknowledged and delivered (a subscriber counts distinct alert ids). Writes
`soak.md` (the table and the closing summary), `soak.csv` and `soak.png` to --out.

Run as root: `.venv/bin/python bench/soak.py [--duration 1h] [--out DIR]`. Needs mosquitto
and matplotlib (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from auditd.kernel.cgroups import cgroup2_path
from auditd.kernel.paths import KernelPaths
from auditd.model.units import parse_duration

TICKS = os.sysconf("SC_CLK_TCK")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

# Each workload runs `python -c PROLOGUE + code` in its cgroup; argv[1] is the work directory.
_PROLOGUE = "import os, sys, time\nopen(sys.argv[2], 'w').write(str(os.getpid()))\n"
_NOBODY = "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
WORKLOADS = {
    "refusals": _NOBODY
    + r"""
secret, n, last = os.path.join(sys.argv[1], "secret"), 0, 0.0
while True:
    for _ in range(50):
        try: os.open(secret, os.O_RDONLY)
        except OSError: pass
    if time.monotonic() - last >= 2:
        last, n = time.monotonic(), n + 1
        try: os.open(os.path.join(sys.argv[1], f"soak-secret-{n}"), os.O_RDONLY)
        except OSError: pass
    time.sleep(1)
""",
    "landlock": r"""
import subprocess
child = r'''
import ctypes, os
class A(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("sc", ctypes.c_uint64)]
libc = ctypes.CDLL(None, use_errno=True); libc.syscall.restype = ctypes.c_long
a = A(fs=1 << 2)
fd = libc.syscall(444, ctypes.byref(a), ctypes.c_size_t(24), ctypes.c_uint32(0))
libc.prctl(38, 1, 0, 0, 0); libc.syscall(446, ctypes.c_int(fd), ctypes.c_uint32(0))
try: os.open("/etc/hostname", os.O_RDONLY)
except OSError: pass
'''
while True:
    subprocess.run([sys.executable, "-c", child])
    time.sleep(5)
""",
    "namespaces": r"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
home = os.open("/proc/self/ns/uts", os.O_RDONLY)
tick = 0
while True:
    tick += 1
    for _ in range(2000 if tick % 300 == 0 else 1):
        libc.unshare(0x04000000)
        libc.setns(home, 0x04000000)
    time.sleep(0.2)
""",
    "allocations": r"""
r, w = os.pipe()
d = sys.argv[1]
cgroups = os.path.dirname(sys.argv[2])
n = 0
while True:
    n += 1
    for i in range(2000):
        os.write(w, b"x" * 512); os.read(r, 512)
    for i in range(50):
        p = os.path.join(d, f"churn-{i}")
        open(p, "w").write("y" * 4096); os.unlink(p)
    g = os.path.join(os.path.dirname(cgroups), f"soak-churn-{n}.scope")
    os.mkdir(g)
    pid = os.fork()
    if pid == 0:
        open(os.path.join(g, "cgroup.procs"), "w").write(str(os.getpid()))
        open("/dev/null").read(); os._exit(0)
    os.waitpid(pid, 0); os.rmdir(g)
    time.sleep(1)
""",
}


def metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out[m[1], tuple(sorted(_LABEL.findall(m[2] or "")))] = float(m[3])
    return out


def total(sampled: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(v for (n, _), v in sampled.items() if n == name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A Mosquitto on loopback with persistence, stopped and started on the same port."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = directory / "mosquitto.conf"
        self.config.write_text(
            f"user root\nlistener {self.port} 127.0.0.1\npersistence true\n"
            f"persistence_location {directory}/\nautosave_interval 1\nallow_anonymous true\n"
            f"log_dest file {directory}/mosquitto.log\nmax_queued_messages 1000000\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.config)])
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


class Subscriber:
    """Counts distinct alert ids delivered (QoS 1, a persistent session across outages)."""

    def __init__(self, port: int, prefix: str) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.ids: set[str] = set()
        self._lock = threading.Lock()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"soak-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )  # fmt: skip
        self.client.on_connect = lambda c, *_: c.subscribe(f"{prefix}/alerts/#", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.5, 2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _client: object, _data: object, message: object) -> None:
        with contextlib.suppress(ValueError, AttributeError):
            alert = json.loads(message.payload)  # type: ignore[attr-defined]
            with self._lock:
                self.ids.add(str(alert["id"]))

    def delivered(self) -> int:
        with self._lock:
            return len(self.ids)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Process:
    """CPU, RSS and fds of one process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._cpu: tuple[float, float] | None = None

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def cpu_percent(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        used = (int(fields[11]) + int(fields[12])) / TICKS
        now = time.monotonic()
        last, self._cpu = self._cpu, (now, used)
        return 0.0 if last is None else 100 * (used - last[1]) / max(now - last[0], 1e-9)


@contextlib.contextmanager
def cgroup(parent: Path, name: str) -> Iterator[Path]:
    path = parent / name
    path.mkdir()
    try:
        yield path
    finally:
        _remove(path)


def _remove(path: Path) -> None:
    """Kill what runs in the cgroup and its children, remove them all."""
    for child in [c for c in path.iterdir() if c.is_dir()]:
        _remove(child)
    for pid in (path / "cgroup.procs").read_text().split():
        with contextlib.suppress(OSError):
            os.kill(int(pid), signal.SIGKILL)
    for _ in range(100):
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.05)


def write_config(work: Path, broker: Broker, prefix: str) -> Path:
    policy = work / "policy.yaml"
    default = (ROOT / "auditd" / "policy" / "policies" / "default.yaml").read_text()
    policy.write_text(
        default
        + "\n  - name: soak-secret\n    description: A soak file was refused.\n"
        + '    match: {kind: denial, target: {glob: "**/soak-secret-*"}}\n'
        + "    dedup: [target]\n    cooldown: 0s\n    rate_limit: {alerts: 1000, per: 60s}\n"
    )
    config = work / "config.yaml"
    config.write_text(
        f"metrics:\n  listen: '127.0.0.1:{free_port()}'\nlog:\n  level: warning\n"
        f"state_dir: {work / 'state'}\npolicy:\n  file: {policy}\n"
        f"mqtt:\n  url: mqtt://127.0.0.1:{broker.port}\n  topic_prefix: {prefix}\n"
        "  reconnect_max_delay: 2\n"
    )
    return config


COLUMNS = ("t_s", "rss_mb", "cpu_pct", "fds", "drops", "alerts", "published", "acked",
           "delivered", "spool", "scrape_ms")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", default="1h", type=parse_duration)
    parser.add_argument("--interval", default=10.0, type=float)
    parser.add_argument("--out", default=Path("soak-out"), type=Path)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    args.out.mkdir(parents=True, exist_ok=True)
    root = cgroup2_path(KernelPaths())
    assert root is not None, "no cgroup v2 mount"
    rows: list[dict[str, float]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bpf-auditd-soak-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        work.chmod(0o755)
        (work / "secret").write_text("no\n")
        (work / "secret").chmod(0o600)
        broker = Broker(work / "broker")
        broker.start()
        stack.callback(broker.stop)
        prefix = f"soak-{uuid.uuid4().hex[:6]}"
        subscriber = Subscriber(broker.port, prefix)
        stack.callback(subscriber.close)
        config = write_config(work, broker, prefix)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "auditd", "run", "--config", str(config)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        stack.callback(lambda: (daemon.send_signal(signal.SIGTERM), daemon.wait(timeout=60)))
        url = "http://" + config.read_text().split("'")[1] + "/metrics"
        for _ in range(600):
            with contextlib.suppress(OSError):
                metrics(url)
                break
            if daemon.poll() is not None:
                raise SystemExit(f"daemon exited: {daemon.stderr.read() if daemon.stderr else ''}")
            time.sleep(0.2)
        parent = stack.enter_context(cgroup(root, f"bpf-auditd-soak-{os.getpid()}"))
        for name, code in WORKLOADS.items():
            group = stack.enter_context(cgroup(parent, f"soak-{name}.service"))
            proc = subprocess.Popen(
                [sys.executable, "-c", _PROLOGUE + code, str(work), str(group / "cgroup.procs")]
            )
            stack.callback(proc.kill)
        process = Process(daemon.pid)
        process.cpu_percent()
        start = time.monotonic()
        stop_scrapes = threading.Event()
        scrape_ms: list[float] = []

        def scraper() -> None:
            while not stop_scrapes.wait(1.0):
                began = time.monotonic()
                with contextlib.suppress(OSError):
                    metrics(url)
                    scrape_ms.append(1000 * (time.monotonic() - began))

        threading.Thread(target=scraper, daemon=True).start()
        stack.callback(stop_scrapes.set)
        next_sample, next_reload, broker_up = start + args.interval, start + 60, True
        while True:
            now = time.monotonic()
            elapsed = now - start
            if elapsed >= args.duration:
                break
            if now >= next_reload:
                next_reload += 60
                daemon.send_signal(signal.SIGHUP)
            in_outage = 240 <= elapsed % 300 < 270  # 30 s of every 5 minutes
            if in_outage and broker_up:
                broker.stop()
                broker_up = False
            elif not in_outage and not broker_up:
                broker.start()
                broker_up = True
            if now >= next_sample:
                next_sample += args.interval
                rows.append(sample(process, url, subscriber, elapsed, scrape_ms))
                print(" ".join(f"{c}={rows[-1][c]:.1f}" for c in COLUMNS), flush=True)
            time.sleep(0.25)
        if not broker_up:
            broker.start()
        # Let the spool drain, then the last sample: alerts sent vs delivered.
        for _ in range(120):
            m = metrics(url)
            if total(m, "bpf_auditd_mqtt_spool_messages") == 0 and subscriber.delivered() >= (
                total(m, "bpf_auditd_alerts_total")
            ):
                break
            time.sleep(0.5)
        rows.append(sample(process, url, subscriber, time.monotonic() - start, scrape_ms))
        final = metrics(url)
    drops = {
        ", ".join(v for _, v in labels): n
        for (name, labels), n in final.items()
        if n
        and name in ("bpf_auditd_events_dropped_total", "bpf_auditd_mqtt_messages_dropped_total")
    }
    report(rows, args.out, drops)
    return 0


def sample(
    process: Process, url: str, subscriber: Subscriber, elapsed: float, scrape_ms: list[float]
) -> dict[str, float]:
    m = metrics(url)
    worst, scrape_ms[:] = max(scrape_ms, default=0.0), []
    return {
        "t_s": elapsed,
        "rss_mb": process.rss_mb(),
        "cpu_pct": process.cpu_percent(),
        "fds": process.fds(),
        "drops": total(m, "bpf_auditd_events_dropped_total")
        + total(m, "bpf_auditd_mqtt_messages_dropped_total"),
        "alerts": total(m, "bpf_auditd_alerts_total"),
        "published": total(m, "bpf_auditd_mqtt_messages_published_total"),
        "acked": total(m, "bpf_auditd_mqtt_messages_acknowledged_total"),
        "delivered": subscriber.delivered(),
        "spool": total(m, "bpf_auditd_mqtt_spool_messages"),
        "scrape_ms": worst,
    }


def report(rows: list[dict[str, float]], out: Path, drops: dict[str, float]) -> None:
    with (out / "soak.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    first = min(rows, key=lambda r: abs(r["t_s"] - 60))  # RSS once started and warmed up
    last = rows[-1]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(f"{r[c]:.1f}" for c in COLUMNS) + " |" for r in rows]
    change = 100 * (last["rss_mb"] - first["rss_mb"]) / first["rss_mb"]
    summary = [
        f"RSS after the first minute (t={first['t_s']:.0f} s): {first['rss_mb']:.1f} MB; "
        f"at the end (t={last['t_s']:.0f} s): {last['rss_mb']:.1f} MB ({change:+.1f}%)",
        f"drops (events and MQTT): {last['drops']:.0f}"
        + "".join(f"; {where}: {n:.0f}" for where, n in sorted(drops.items())),
        f"alerts raised {last['alerts']:.0f}, published {last['published']:.0f}, acknowledged "
        f"{last['acked']:.0f}, delivered {last['delivered']:.0f} (distinct ids)",
        f"open fds first {rows[0]['fds']:.0f}, last {last['fds']:.0f}; worst scrape "
        f"{max(r['scrape_ms'] for r in rows):.0f} ms",
    ]
    (out / "soak.md").write_text("\n".join([*lines, "", *summary]) + "\n")
    print("\n".join(summary))
    plot(rows, out / "soak.png")


def plot(rows: list[dict[str, float]], path: Path) -> None:
    import matplotlib.pyplot as plt

    t = [r["t_s"] / 60 for r in rows]
    panels = (("rss_mb", "RSS (MB)"), ("cpu_pct", "CPU (% of a core)"), ("fds", "open fds"),
              ("drops", "drops (total)"), ("alerts", "alerts"))  # fmt: skip
    fig, axes = plt.subplots(len(panels), 1, sharex=True, figsize=(9, 11))
    for ax, (column, label) in zip(axes, panels, strict=True):
        ax.plot(t, [r[column] for r in rows], label=column)
        if column == "alerts":
            ax.plot(t, [r["delivered"] for r in rows], label="delivered")
            ax.legend()
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("minutes")
    fig.suptitle("bpf-auditd soak")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
