"""The shipped PrometheusRule and Grafana dashboard: valid, over metrics that exist, alerts unit-tested.

Metric names are collected from the services' own registries (runtime, ticker,
dashboard), so a renamed metric fails here rather than silently in production.
`promtool` (built by scripts/install-promtool.sh) checks the rules and runs
deploy/prometheus/rules-test.yaml.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.dashboard.app import DashboardMetrics
from services.ticker.metrics import TickerMetrics
from shared.runtime._metrics import RuntimeMetrics

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
#: Pinned here and in scripts/install-promtool.sh: bump both together.
PROMTOOL_VERSION = "v0.307.3"
PROMTOOL = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    / "marketpulse"
    / "bin"
    / f"promtool-{PROMTOOL_VERSION}"
)
REQUIRED_ALERTS = {
    "MarketpulseJobFailing",  # a job failing N times
    "MarketpulseJobStale",  # no success within its freshness target
    "MarketpulseDeadLetters",  # DLQ not empty
    "MarketpulseConsumerLag",  # consumer lag
    "MarketpulseTickerDown",  # ticker down
}
_METRIC_RE = re.compile(r"\b(pulse_[a-z0-9_]+)")


def exported_metrics() -> set[str]:
    """Every sample name the services can export (counters with _total, histograms with _bucket/_sum/_count)."""
    names: set[str] = set()
    for registry in (RuntimeMetrics().registry, TickerMetrics().registry, DashboardMetrics().registry):
        for family in registry.collect():
            kind = family.type
            names.add(family.name)
            if kind == "counter":
                names |= {f"{family.name}_total", f"{family.name}_created"}
            if kind == "histogram":
                names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count", "created")}
    return names


def metrics_in(expr: str) -> set[str]:
    return set(_METRIC_RE.findall(expr))


def rule_file() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((PROMETHEUS / "rules.yaml").read_text())
    return data


def alerts() -> list[dict[str, Any]]:
    return [rule for group in rule_file()["spec"]["groups"] for rule in group["rules"] if "alert" in rule]


def grafana_exprs() -> list[str]:
    board = json.loads((PROMETHEUS / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    exprs += [v["query"]["query"] for v in board["templating"]["list"] if isinstance(v.get("query"), dict)]
    return exprs


def test_the_rule_is_a_prometheus_rule_with_every_required_alert() -> None:
    data = rule_file()
    assert data["apiVersion"] == "monitoring.coreos.com/v1"
    assert data["kind"] == "PrometheusRule"
    assert {rule["alert"] for rule in alerts()} == REQUIRED_ALERTS
    for rule in alerts():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


@pytest.mark.parametrize("alert", sorted(REQUIRED_ALERTS))
def test_alerts_reference_metrics_that_exist(alert: str) -> None:
    [rule] = [r for r in alerts() if r["alert"] == alert]
    used = metrics_in(rule["expr"])
    assert used, f"{alert} uses no marketpulse metric"
    assert used <= exported_metrics(), f"{alert}: unknown metrics {sorted(used - exported_metrics())}"


def test_every_grafana_query_references_metrics_that_exist() -> None:
    exprs = grafana_exprs()
    assert len(exprs) >= 10
    known = exported_metrics()
    unknown = sorted({metric for expr in exprs for metric in metrics_in(expr)} - known)
    assert unknown == []
    assert all(metrics_in(expr) for expr in exprs), "a panel query that reads no marketpulse metric"


def test_the_metric_check_would_catch_a_renamed_metric() -> None:
    assert metrics_in("rate(pulse_runs_total[5m])") <= exported_metrics()
    assert not metrics_in("rate(pulse_run_total[5m])") <= exported_metrics()


def test_the_rule_unit_tests_cover_every_alert() -> None:
    tests = yaml.safe_load((PROMETHEUS / "rules-test.yaml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case.get("exp_alerts")}
    assert tested == REQUIRED_ALERTS


# -- promtool ----------------------------------------------------------------------------


def promtool() -> Path:
    if not PROMTOOL.exists():
        pytest.fail(f"no {PROMTOOL}: run scripts/install-promtool.sh (part of scripts/bootstrap.sh --for-tests)")
    return PROMTOOL


def promtool_files(tmp_path: Path) -> Path:
    """Plain Prometheus rule files (promtool does not read the PrometheusRule wrapper)."""
    (tmp_path / "rules.promtool.yaml").write_text(yaml.safe_dump({"groups": rule_file()["spec"]["groups"]}))
    (tmp_path / "rules-test.yaml").write_text((PROMETHEUS / "rules-test.yaml").read_text())
    return tmp_path


def test_promtool_checks_the_rules(tmp_path: Path) -> None:
    folder = promtool_files(tmp_path)
    result = subprocess.run(
        [str(promtool()), "check", "rules", str(folder / "rules.promtool.yaml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout + result.stderr


def test_promtool_unit_tests_of_the_alerts_pass(tmp_path: Path) -> None:
    folder = promtool_files(tmp_path)
    result = subprocess.run(
        [str(promtool()), "test", "rules", "rules-test.yaml"],
        capture_output=True, text=True, timeout=120, check=False, cwd=folder,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """Guards the unit tests: a rule with the wrong threshold fails them."""
    folder = promtool_files(tmp_path)
    text = (folder / "rules.promtool.yaml").read_text().replace("pulse_dlq_messages) > 0", "pulse_dlq_messages) > 5")
    (folder / "rules.promtool.yaml").write_text(text)
    result = subprocess.run(
        [str(promtool()), "test", "rules", "rules-test.yaml"],
        capture_output=True, text=True, timeout=120, check=False, cwd=folder,
    )  # fmt: skip
    assert result.returncode != 0
    assert "MarketpulseDeadLetters" in result.stdout + result.stderr


def test_the_install_script_and_the_tests_pin_the_same_promtool() -> None:
    script = (ROOT / "scripts" / "install-promtool.sh").read_text()
    assert f"version={PROMTOOL_VERSION}\n" in script
