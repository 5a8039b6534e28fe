"""A real Prometheus server (Debian's `prometheus`) on a free loopback port, for tests."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ASSETS = Path(__file__).resolve().parent.parent / "exporters" / "prometheus"
# Dashboard variables and Grafana's built-ins, replaced by values PromQL accepts.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$job": ".+", "$instance": ".+",
                     "$service": ".+"}  # fmt: skip


def dashboard_exprs() -> list[str]:
    """Every query of the shipped Grafana dashboard, as written (with Grafana variables)."""
    dashboard = json.loads((ASSETS / "dashboard.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def substituted(expr: str) -> str:
    """A dashboard query as PromQL, its variables replaced."""
    for variable, replacement in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, replacement)
    assert "$" not in expr, expr
    return expr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrometheusServer:
    """`with PrometheusServer(workdir, config) as prom:` runs Prometheus with `config` (a dict,
    written as prometheus.yml in `workdir`) and its own TSDB in `workdir`; stops it on exit."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.config_file = workdir / "prometheus.yml"
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log = workdir / "prometheus.log"

    def __enter__(self) -> PrometheusServer:
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        # The port is probed free, then handed over: another process may take it in between,
        # so a start that fails with the address in use is retried on a new port.
        for _ in range(3):
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            with self.log.open("wb") as log:
                self.proc = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={self.config_file}",
                        f"--storage.tsdb.path={self.workdir / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--web.enable-lifecycle",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                )
            if self._wait_ready():
                return self
            self.stop()
            if "address already in use" not in self.log.read_text():
                break
        raise AssertionError(f"prometheus did not start: {self.log.read_text()[-2000:]}")

    def _wait_ready(self, timeout: float = 60.0) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.2)
        return False

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """An instant PromQL query: [(labels, value)] of the resulting vector."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def wait_for(self, expr: str, want: float, timeout: float = 90.0) -> float | None:
        """Polls `expr` (one series expected) until it equals `want`; returns the last value."""
        deadline = time.monotonic() + timeout
        got: float | None = None
        while time.monotonic() < deadline:
            result = self.query(expr)
            got = result[0][1] if len(result) == 1 else None
            if got == want:
                break
            time.sleep(0.5)
        return got
