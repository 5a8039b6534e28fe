"""A real Prometheus server scrapes the real daemon, configured from the shipped scrape config and
alerting rules, and reads refusals back through its HTTP query API."""

from __future__ import annotations

import copy
import time
import urllib.parse
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from _certs import make_certs
from _daemon import DaemonProcess
from _prometheus import ASSETS, PrometheusServer, dashboard_exprs, substituted
from _workload import denied_opens, scratch_cgroup, secret_file

from auditd.kernel.cgroups import service_of

pytestmark = [pytest.mark.needs_bpf, pytest.mark.needs_prometheus]

N = 250
PASSWORD = "scrape-me"


def _scrape_config(address: str, tmp_path: Path, secure: bool) -> dict[str, Any]:
    """The shipped scrape-config.yml, aimed at the daemon, scraping every second."""
    config = yaml.safe_load((ASSETS / "scrape-config.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(ASSETS / "alerts.yml")]
    job = config["scrape_configs"][0]
    assert job["job_name"] == "bpf-auditd"
    job["static_configs"] = [{"targets": [address]}]
    if not secure:
        for key in ("scheme", "tls_config", "basic_auth"):
            del job[key]
        return config
    password_file = tmp_path / "scrape-password"
    password_file.write_text(PASSWORD + "\n")
    job["tls_config"]["ca_file"] = str(tmp_path / "certs" / "ca.pem")
    job["basic_auth"]["password_file"] = str(password_file)
    wrong = copy.deepcopy(job)
    wrong["job_name"] = "wrong-password"
    del wrong["basic_auth"]["password_file"]
    wrong["basic_auth"]["password"] = "not-" + PASSWORD
    plain = copy.deepcopy(job)
    plain["job_name"] = "plain-http"
    for key in ("scheme", "tls_config"):
        del plain[key]
    config["scrape_configs"] += [wrong, plain]
    return config


def _daemon_config(tmp_path: Path, secure: bool) -> Path:
    text = "metrics:\n  listen: '127.0.0.1:0'\n"
    if secure:
        make_certs(tmp_path / "certs")
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
        # The shipped example, with our certificates (relative names) and user.
        web = yaml.safe_load((ASSETS / "web-config.yml").read_text())
        web["tls_server_config"]["cert_file"] = "certs/server.pem"
        web["tls_server_config"]["key_file"] = "certs/server.key"
        web["basic_auth_users"] = {"prometheus": hashed}
        (tmp_path / "web.yml").write_text(yaml.safe_dump(web))
        text += "  web_config: web.yml\n"
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def _targets(prom: PrometheusServer) -> dict[str, dict[str, Any]]:
    return {t["labels"]["job"]: t for t in prom.api("targets", state="active")["activeTargets"]}


def _wait(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


@pytest.mark.parametrize("secure", [False, True], ids=["http", "tls-basic-auth"])
def test_prometheus_reads_back_n_denials(tmp_path: Path, secure: bool) -> None:
    daemon = DaemonProcess(_daemon_config(tmp_path, secure))
    try:
        url = urllib.parse.urlsplit(daemon.ready()["metrics"])
        assert url.scheme == ("https" if secure else "http")
        workdir = tmp_path / "prometheus"
        workdir.mkdir()
        config = _scrape_config(url.netloc, tmp_path, secure)
        with (
            PrometheusServer(workdir, config) as prom,
            scratch_cgroup() as cgroup,
            secret_file() as secret,
        ):
            assert prom.wait_for('up{job="bpf-auditd"}', 1) == 1, _targets(prom)
            service = service_of("/" + cgroup.name)
            _, refused = denied_opens(secret, N, cgroup)
            assert refused == N
            expr = (
                f'bpf_auditd_denials_total{{job="bpf-auditd",service="{service}",'
                'source="syscall",syscall="openat",errno="EACCES"}'
            )
            assert prom.wait_for(expr, N) == N
            # Exactly N, not more: a later scrape still says N.
            time.sleep(2)
            assert prom.wait_for(expr, N) == N

            if secure:
                targets = _targets(prom)
                _wait(lambda: _targets(prom)["plain-http"]["lastError"], "scrape errors")
                targets = _targets(prom)
                assert targets["wrong-password"]["health"] == "down"
                assert "401 Unauthorized" in targets["wrong-password"]["lastError"]
                assert targets["plain-http"]["health"] == "down"
                assert "400 Bad Request" in targets["plain-http"]["lastError"]

            # The shipped rules load and evaluate against the real series without errors.
            def rules() -> list[dict[str, Any]]:
                groups = prom.api("rules")["groups"]
                return [rule for group in groups for rule in group["rules"]]

            _wait(lambda: all(r["health"] != "unknown" for r in rules()), "rule evaluation")
            shipped = yaml.safe_load((ASSETS / "alerts.yml").read_text())["groups"]
            assert len(rules()) == sum(len(group["rules"]) for group in shipped)
            assert {r["name"]: r["health"] for r in rules() if r["health"] != "ok"} == {}
            firing = {r["name"] for r in rules() if r["state"] == "firing"}
            assert "BpfAuditdProbeDown" not in firing

            # The dashboard's queries run on the real series; its refusals panel shows ours.
            for expr in dashboard_exprs():
                prom.query(substituted(expr))
            by_service = next(e for e in dashboard_exprs() if e.startswith("sum by (service) "
                              "(rate(bpf_auditd_denials_total"))  # fmt: skip
            assert service in {labels.get("service") for labels, _ in prom.query(
                substituted(by_service).replace("[1m]", "[5m]"))}  # fmt: skip
    finally:
        daemon.stop(timeout=30)
