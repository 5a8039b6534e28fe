"""The shipped Prometheus assets (exporters/prometheus/): rules pass promtool's checks and unit
tests, the dashboard's queries parse, the examples load, and every metric they use is documented."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from _certs import make_certs
from _daemon import DaemonProcess
from _prometheus import ASSETS, dashboard_exprs, substituted

from auditd.config import webconfig

ROOT = Path(__file__).resolve().parent.parent


def _promtool(*args: str, cwd: Path = ASSETS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def documented_metrics() -> set[str]:
    """Metric names in the README's metrics section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`(bpf_auditd_[a-z_]+)`", section))


def _alerts() -> list[dict[str, object]]:
    rules = yaml.safe_load((ASSETS / "alerts.yml").read_text())
    return [r for g in rules["groups"] for r in g["rules"] if "alert" in r]


def _metric_names(text: str) -> set[str]:
    return set(re.findall(r"\b(bpf_auditd_[a-z_]+)\b", text))


@pytest.mark.needs_prometheus
def test_promtool_checks_the_rules() -> None:
    proc = _promtool("check", "rules", "alerts.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in proc.stdout
    assert "WARNING" not in proc.stdout + proc.stderr


@pytest.mark.needs_prometheus
def test_promtool_runs_the_rule_unit_tests() -> None:
    proc = _promtool("test", "rules", "alerts_test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_is_unit_tested_and_labelled() -> None:
    alerts = _alerts()
    tests = yaml.safe_load((ASSETS / "alerts_test.yml").read_text())
    firing_tested = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {a["alert"] for a in alerts} == firing_tested
    for alert in alerts:
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}, alert["alert"]
        assert {"summary", "description"} <= set(alert["annotations"]), alert["alert"]
    required = {"BpfAuditdNamespaceEscape", "BpfAuditdDenialFlood", "BpfAuditdEventsDropped",
                "BpfAuditdProbeDown"}  # fmt: skip
    assert required <= {a["alert"] for a in alerts}


@pytest.mark.needs_prometheus
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    dashboard = json.loads((ASSETS / "dashboard.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    # promtool parses recording rules: each query becomes one.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": substituted(e)} for i, e in enumerate(exprs)
    ]}]}  # fmt: skip
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = _promtool("check", "rules", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_assets_use_only_documented_metrics() -> None:
    documented = documented_metrics()
    for name in ("alerts.yml", "alerts_test.yml", "dashboard.json"):
        used = _metric_names((ASSETS / name).read_text())
        assert used, name
        assert used <= documented, (name, used - documented)


@pytest.mark.needs_prometheus
def test_scrape_config_example_is_valid(tmp_path: Path) -> None:
    for name in ("scrape-config.yml", "alerts.yml"):
        shutil.copy(ASSETS / name, tmp_path / name)
    (tmp_path / "ca.pem").touch()
    (tmp_path / "scrape-password").write_text("x\n")
    proc = _promtool("check", "config", "scrape-config.yml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.needs_prometheus
def test_web_config_example_is_valid(tmp_path: Path) -> None:
    """Loaded by the daemon and by promtool, once the certificates it names exist."""
    certs = make_certs(tmp_path / "certs")
    shutil.copy(certs.server_cert, tmp_path / "server.pem")
    shutil.copy(certs.server_key, tmp_path / "server.key")
    example = tmp_path / "web-config.yml"
    shutil.copy(ASSETS / "web-config.yml", example)
    web = webconfig.load(example)
    assert web.context is not None
    assert set(web.users) == {"prometheus"}
    proc = _promtool("check", "web-config", str(example), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.needs_bpf
def test_every_exported_metric_is_documented(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("metrics:\n  listen: '127.0.0.1:0'\n")
    daemon = DaemonProcess(config)
    try:
        daemon.ready()
        text = daemon.scrape()
    finally:
        daemon.stop(timeout=30)
    exported: set[str] = {
        m.group(1) for m in re.finditer(r"^# TYPE (bpf_auditd_\w+) ", text, re.MULTILINE)
    }
    assert exported
    assert exported <= documented_metrics(), exported - documented_metrics()
