"""The dashboard and the alert rules as files: generated from monitoring/, checked by promtool.

The live test (test_dashboard_live.py) runs their queries against a real Prometheus; these
tests check what needs no server: the checked-in files are what the generators make, promtool
accepts the rules and passes its unit tests (a firing and a silent case for every alert), and
every panel and rule carries what an SRE needs (units, descriptions, severity, runbook).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

from monitoring import alerts, dashboard

HERE = Path(__file__).resolve().parent


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: apt-get install prometheus (scripts/test installs it)"
    return subprocess.run([binary, *args], capture_output=True, text=True, cwd=HERE,
                          timeout=120)


def test_checked_in_dashboard_is_the_generated_one() -> None:
    assert dashboard.OUTPUT.read_text() == dashboard.render(), \
        "stale dashboard JSON: run python -m monitoring.dashboard"


def test_checked_in_alert_rules_are_the_generated_ones() -> None:
    assert alerts.OUTPUT.read_text() == alerts.render(), \
        "stale alert rules: run python -m monitoring.alerts"


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(alerts.OUTPUT))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts.alerts())} rules found" in result.stdout


def test_promtool_unit_tests_fire_and_stay_silent_for_every_alert() -> None:
    result = promtool("test", "rules", "alerts_test.yaml")
    print(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
    cases = yaml.safe_load((HERE / "alerts_test.yaml").read_text())
    fires: set[str] = set()
    silent: set[str] = set()
    for test in cases["tests"]:
        for check in test.get("alert_rule_test") or ():
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {a.name for a in alerts.alerts()}
    assert fires == names, f"alerts without a firing case: {names - fires}"
    assert silent == names, f"alerts without a silent case: {names - silent}"


def test_every_rule_has_severity_summary_description_and_runbook() -> None:
    doc = yaml.safe_load(alerts.OUTPUT.read_text())
    rules = [r for group in doc["groups"] for r in group["rules"]]
    assert {r["alert"] for r in rules} >= {
        "KeyrotorRotationOverdue", "KeyrotorStuckInOverlap", "KeyrotorHolding",
        "KeyrotorConsumersFailing", "KeyrotorBackendErrors", "KeyrotorDegraded",
        "KeyrotorOperatorAbsent", "KeyrotorPresentersOnPrevious",
        "KeyrotorRevokedVersionPresented"}
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["for"], rule["alert"]  # no alert fires on a single evaluation
        for key in ("summary", "description", "runbook"):
            assert len(rule["annotations"][key]) > 20, (rule["alert"], key)
    assert all(a.signals for a in alerts.alerts())


def test_the_operator_job_can_be_named() -> None:
    text = alerts.render(operator_job="keyrotor-metrics")
    assert 'absent(up{job=~"keyrotor-metrics"} == 1 and on (job, instance) ' \
           "keyrotor_build_info)" in text


def test_every_panel_has_a_description_a_unit_and_the_datasource_variable() -> None:
    doc = json.loads(dashboard.OUTPUT.read_text())
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "namespace", "name", "secret"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    panels = dashboard.panels(doc)
    for panel in panels:
        assert panel["description"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        if panel["type"] in ("timeseries", "bargauge"):
            assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"], panel["title"]
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for metric in ("keyrotor_rotations_total", "keyrotor_current_version_created_timestamp_seconds",
                   "keyrotor_next_rotation_timestamp_seconds", "keyrotor_phase",
                   "keyrotor_overlap_active", "keyrotor_rotation_holding", "keyrotor_degraded",
                   "keyrotor_consumer_probe_failures_total", "keyrotor_backend_errors_total",
                   "keyrotor_backend_request_duration_seconds_bucket",
                   "keyrotor_client_presentations_total", "keyrotor_reconcile_errors_total",
                   "keyrotor_leader", "keyrotor_leader_changes_total", "up{"):
        assert metric in exprs, metric
    assert any(p["type"] == "state-timeline" and "keyrotor_phase" in p["targets"][0]["expr"]
               for p in panels)
