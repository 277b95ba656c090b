"""Every dashboard query and every alert rule, run against a real Prometheus scraping a real
operator while it rotates.

One operator (with leader election on, so the leader metrics are the real thing) watches a
fresh namespace with three RotatingSecrets, each there to make a group of metrics exist:

* ``api-*`` rotates every few seconds (TwoKeys) with a real acceptor and a real presenter
  built on keyrotor.client (``python -m keyrotor.testing.consumerapp``), each reading its own
  kubelet-style mount: rotations, durations, phases, overlap, probes and every
  ``keyrotor_client_*`` series;
* ``stuck-*`` has a consumer nobody answers and a short maxOverlap: consumer probe failures,
  then Holding (and the alert KeyrotorHolding's full expression returns it);
* ``vault-*`` uses a Vault backend at an address where nothing listens (no Vault server
  needed): backend requests, errors and latency, reconcile errors, Degraded.

Then the test substitutes the template variables of every target of the checked-in dashboard
JSON (``$job``, ``$namespace`` as this test's; ``$name`` as "All"; ``$secret`` as the
presenter's; ``$__rate_interval`` 1m, ``$__range`` 10m) and asserts that each returns series
through Prometheus's HTTP API, and likewise each template variable's query and each signal of
each alert rule (monitoring.alerts: the queries behind its condition, since the alerts are
silent while all is well).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keyrotor.kube import KubeApi
from keyrotor.testing.controlplane import ControlPlane, free_port
from keyrotor.testing.prometheusserver import PrometheusServer
from keyrotor.testing.waiting import wait_for
from monitoring import alerts, dashboard
from tests.operator.conftest import OperatorProcess, rotating_secret, scanned_operator
from tests.operator.helpers import answers
from tests.operator.test_zero_downtime import Fleet

RATE_INTERVAL, RANGE = "1m", "10m"


@pytest.fixture
def elected_operator(control_plane: ControlPlane, crds: None, namespace: str,
                     tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator as the chart runs it: with --leader-elect (its Lease in the namespace)."""
    with scanned_operator(control_plane, namespace, tmp_path, extra_args=[
            "--leader-elect", "--leader-election-namespace", namespace]) as proc:
        yield proc


@pytest.fixture
def fleet(tmp_path: Path, kapi: KubeApi, namespace: str) -> Iterator[Fleet]:
    f = Fleet(tmp_path, kapi, namespace)
    yield f
    f.close()


def substitute(expr: str, values: dict[str, str]) -> str:
    """What Grafana does to a target before sending it: template variables to values."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def variable_query(definition: str) -> tuple[str, str]:
    """``label_values(selector, label)`` as (a PromQL query listing the values, the label)."""
    found = re.fullmatch(r"label_values\((.*), (\w+)\)", definition)
    assert found, definition
    return f"count by ({found.group(2)}) ({found.group(1)})", found.group(2)


def ours(rows: list[dict[str, Any]], mine: dict[str, set[str]]) -> list[dict[str, Any]]:
    """Rows from this test's processes and objects. The session's Prometheus also holds
    series of earlier tests; a row that names none of job, namespace, name or secret
    (an aggregate such as ``sum by (backend, operation)``) is taken as it is."""
    kept = []
    for row in rows:
        labels = row["metric"]
        named = [k for k in mine if k in labels]
        if not named or any(labels[k] in mine[k] for k in named):
            kept.append(row)
    return kept


def test_every_panel_and_alert_query_returns_data(
        control_plane: ControlPlane, kapi: KubeApi, namespace: str,
        elected_operator: OperatorProcess, prometheus: PrometheusServer,
        fleet: Fleet) -> None:
    started = time.monotonic()
    suffix = namespace[-6:]
    api, stuck, vault = f"api-{suffix}", f"stuck-{suffix}", f"vault-{suffix}"
    job, consumers_job = f"keyrotor-{namespace}", f"consumers-{namespace}"
    prometheus.scrape(job, f"127.0.0.1:{elected_operator.metrics_port}")

    def apply(manifest: str) -> None:
        control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)

    # api-*: rotating, verified by a real acceptor; a presenter follows it with the library.
    apply(rotating_secret(api, strategy="TwoKeys", generator={"random": {"length": 32}},
                          rotation={"every": "3s", "minOverlap": "1s", "maxOverlap": "2m"},
                          verification={"interval": "300ms", "successesRequired": 1}))
    acceptor_port, acceptor_metrics, presenter_metrics = free_port(), free_port(), free_port()
    fleet.run("acceptor", "keyrotor.testing.consumerapp", "acceptor",
              "--mount", str(fleet.mount("acceptor", api, period=0.2)),
              "--port", str(acceptor_port), "--metrics-port", str(acceptor_metrics))
    url = f"http://127.0.0.1:{acceptor_port}/"
    wait_for(answers(url), timeout=30, what="the acceptor")
    stats = fleet.tmp / "presenter.json"
    fleet.run("presenter", "keyrotor.testing.consumerapp", "presenter",
              "--mount", str(fleet.mount("presenter", api, period=0.5)), "--url", url,
              "--period", "0.05", "--fallback", "--metrics-port", str(presenter_metrics),
              "--stats", str(stats))
    prometheus.scrape(consumers_job, f"127.0.0.1:{acceptor_metrics}",
                      f"127.0.0.1:{presenter_metrics}")
    control_plane.kubectl("patch", "rsec", api, "-n", namespace, "--type=merge", "-p",
                          json.dumps({"spec": {"consumers": [{"name": "acceptor", "http": {
                              "url": url,
                              "headers": {"Authorization": "Bearer {{ candidate }}"}}}]}}))
    # stuck-*: its only consumer never answers; past maxOverlap the rotation holds.
    apply(rotating_secret(stuck, generator={"random": {"length": 32}},
                          rotation={"every": "1s", "minOverlap": "1s", "maxOverlap": "2s"},
                          verification={"interval": "300ms", "successesRequired": 1,
                                        "failureThreshold": 1},
                          consumers=[{"name": "nobody", "http": {
                              "url": f"http://127.0.0.1:{free_port()}/"}}]))
    # vault-*: a Vault backend where no Vault listens.
    control_plane.kubectl("create", "secret", "generic", "vault-token", "-n", namespace,
                          "--from-literal=token=not-a-real-token")
    apply(rotating_secret(vault, generator={"vault": {
        "address": f"http://127.0.0.1:{free_port()}", "kv": {"path": f"keyrotor/{vault}"},
        "auth": {"tokenSecretRef": {"name": "vault-token"}}}}))

    def seen(promql: str) -> bool:
        return bool(prometheus.query(promql))

    sel = f'job="{job}", namespace="{namespace}"'
    for promql, what in [
        (f'keyrotor_rotations_total{{{sel}, name="{api}"}} >= 2', "two rotations of api-*"),
        (f'keyrotor_rotation_holding{{{sel}, name="{stuck}"}} == 1', "stuck-* Holding"),
        (f'keyrotor_degraded{{{sel}, name="{vault}"}} == 1', "vault-* Degraded"),
        (f'keyrotor_backend_errors_total{{job="{job}", backend="vault"}}', "a backend error"),
        # rate() needs two scrapes with an increase between them: the retries' backoff can
        # leave the first scrapes at one error (the alert below then read 0 / 0 in CI).
        (f'rate(keyrotor_backend_errors_total{{job="{job}", backend="vault", '
         f'operation="kv.read_metadata"}}[5m]) > 0', "backend errors rising"),
        (f'keyrotor_client_presentations_total{{job="{consumers_job}", secret="{api}"}}',
         "presentations"),
        (f'keyrotor_client_verifications_total{{job="{consumers_job}", secret="{api}", '
         'slot="current"}', "verifications"),
        (f'keyrotor_leader{{job="{job}"}} == 1', "the operator leading"),
    ]:
        wait_for(lambda q=promql: seen(q), timeout=90, interval=0.5, what=what)
    setup = time.monotonic() - started

    values = {"datasource": "prometheus", "job": job, "namespace": namespace, "name": ".*",
              "secret": api, "__rate_interval": RATE_INTERVAL, "__range": RANGE,
              "__interval": "15s"}
    mine = {"job": {job, consumers_job}, "namespace": {namespace},
            "name": {api, stuck, vault}, "secret": {api}}
    empty: list[str] = []
    report: list[str] = []

    def check(kind: str, title: str, promql: str, *,
              required: bool = True) -> list[dict[str, Any]]:
        rows = ours(prometheus.query(promql), mine)
        report.append(f"{len(rows):3d} series  {kind}: {title}")
        if required and not rows:
            empty.append(f"{kind} {title}: {promql}")
        return rows

    doc = json.loads(dashboard.OUTPUT.read_text())
    for variable in doc["templating"]["list"]:
        if variable["type"] != "query":
            continue
        promql, label = variable_query(substitute(variable["query"]["query"], values))
        rows = check("variable", variable["name"], promql)
        expected = {"job": job, "namespace": namespace, "name": api, "secret": api}
        assert expected[variable["name"]] in {r["metric"].get(label) for r in rows}, \
            (variable["name"], rows)
    panels = dashboard.panels(doc)
    targets = 0
    for panel in panels:
        for target in panel["targets"]:
            targets += 1
            check("panel", f'{panel["title"]} [{target["refId"]}]',
                  substitute(target["expr"], values))
    # The phase timeline's numbers are the phases (value mappings turn them back into names).
    phases = {r["metric"]["name"]: float(r["value"][1]) for r in prometheus.query(
        substitute(dashboard.phase_query(), values))}
    assert phases[stuck] == dashboard.PHASES["Holding"], phases
    rules = alerts.alerts()
    signals = 0
    for rule in rules:
        for i, signal in enumerate(rule.signals):
            signals += 1
            check("alert signal", f"{rule.name} #{i + 1}", signal)
    # The full expressions (without their for:) where this test makes the condition true,
    # and where it must not.
    rule = {r.name: r for r in rules}

    def fires(alert: str, /, **labels: str) -> bool:
        rows = check("alert", alert, rule[alert].expr, required=False)
        return any(all(r["metric"].get(k) == v for k, v in labels.items()) for r in rows)

    assert fires("KeyrotorHolding", namespace=namespace, name=stuck)
    assert fires("KeyrotorDegraded", namespace=namespace, name=vault)
    assert fires("KeyrotorConsumersFailing", namespace=namespace, name=stuck, consumer="nobody")
    assert fires("KeyrotorBackendErrors", backend="vault", operation="kv.read_metadata")
    assert not fires("KeyrotorBackendErrors", backend="vault", operation="login")
    assert not fires("KeyrotorRotationOverdue", namespace=namespace)
    assert not fires("KeyrotorNoLeader", job=job)
    assert prometheus.query(rule["KeyrotorOperatorAbsent"].expr) == []
    elapsed = time.monotonic() - started
    print("\n".join(report))
    queried = len(report) - sum(1 for line in report if " alert: " in line)
    print(f"{len(panels)} panels, {targets} panel targets, "
          f"{len(doc['templating']['list']) - 1} variable queries, {len(rules)} alerts with "
          f"{signals} signals: {queried - len(empty)} of {queried} queries returned data; "
          f"setup {setup:.1f} s, total {elapsed:.1f} s", file=sys.stderr)
    assert not empty, "queries without data:\n" + "\n".join(empty)
