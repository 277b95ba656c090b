"""Decoys end to end: the real control plane, the operator running, the Secret mounted the way
kubelet mounts it, a real consumer process (``keyrotor.testing.consumerapp acceptor``, built on
keyrotor.client) and a real Prometheus scraping it.

A RotatingSecret with ``spec.decoys.count: 2``; the test reads a decoy out of the Secret, as a
thief would, and presents it to the acceptor:

* the acceptor refuses it and says "decoy" (verify), and counts it
  (``keyrotor_client_decoy_presentations_total``);
* the library reports it to the operator's endpoint, which checks it against the Secret's
  annotation, records an audit entry (``decoy.presented``), posts the Warning event
  ``DecoyPresented`` on the RotatingSecret, naming the decoy's fingerprint and the identity,
  and counts ``keyrotor_decoy_presentations_total``;
* the rule ``KeyrotorDecoyPresented`` (monitoring/alerts.py) returns the acceptor's series in
  the real Prometheus (its ``for`` is 0m, so that is the alert firing; promtool checks the
  rule's timing);
* a report naming a real version's fingerprint, or a made-up one, gets 404 and no event;
* a rotation keeps the decoys, and the acceptor still recognises them after it; a higher
  count adds one at once and keeps the others;
* no decoy value appears in the acceptor's log, the operator's log, events, status,
  annotations or metrics (the operator fixture's leak scan, which now knows the decoys).
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from keyrotor.kube import KubeApi
from keyrotor.publishing.secret import decoy_fingerprints
from keyrotor.testing.controlplane import ControlPlane, free_port
from keyrotor.testing.processes import spawn, stop
from keyrotor.testing.prometheusserver import PrometheusServer
from keyrotor.testing.secretmount import SecretMirror
from keyrotor.testing.waiting import wait_for
from monitoring import alerts
from tests.operator.conftest import (
    OperatorProcess,
    crds,
    kapi,
    operator,
    remember_secret,
    rotating_secret,
)
from tests.operator.helpers import decoy_report

__all__ = ["crds", "kapi", "operator"]

NAME = "api"
THIEF = "203.0.113.7"


@pytest.fixture
def prometheus() -> Iterator[PrometheusServer]:
    with PrometheusServer() as server:
        yield server


def decoys_in(secret: dict[str, Any] | None) -> dict[str, bytes]:
    data = (secret or {}).get("data") or {}
    return {k: base64.b64decode(v) for k, v in data.items() if k.startswith("retired-")}


def report(port: int, body: dict[str, Any]) -> int:
    return decoy_report(port, body)[0]


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def audited(log: str) -> list[dict[str, Any]]:
    """The decoy.presented lines of the audit trail in an operator's log."""
    entries = []
    for line in log.splitlines():
        if line.startswith("{") and '"decoy.presented"' in line:
            entry = json.loads(line)
            if entry.get("action") == "decoy.presented":
                entries.append(entry)
    return entries


def test_a_presented_decoy_raises_the_alarm(control_plane: ControlPlane, kapi: KubeApi,
                                            namespace: str, operator: OperatorProcess,
                                            prometheus: PrometheusServer,
                                            tmp_path: Path) -> None:
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=rotating_secret(
        NAME, generator={"random": {"length": 32}}, decoys={"count": 2},
        rotation={"minOverlap": "1s", "maxOverlap": "1m"}))
    secret = wait_for(lambda: (s := kapi.get_secret(namespace, NAME)) and
                      len(decoys_in(s)) == 2 and s, timeout=60, what="a Secret with 2 decoys")
    remember_secret(secret)  # the leak scan looks for the decoys too
    stolen = decoys_in(secret)
    current = base64.b64decode(secret["data"]["current"])
    assert current not in stolen.values()
    listed = json.loads(base64.b64decode(secret["data"]["versions.json"]))
    assert listed["current"] == 1 and sorted(f"retired-{n}" for n in listed["retired"]) == \
        sorted(stolen)

    mount = tmp_path / "acceptor" / NAME  # folder named after the RotatingSecret
    mirror = SecretMirror(lambda: kapi.get_secret(namespace, NAME), mount, period=0.2)
    wait_for(mirror.sync, timeout=30, what="the mount")
    mirror.start()
    port, metrics_port = free_port(), free_port()
    log = tmp_path / "acceptor.log"
    acceptor = spawn([sys.executable, "-m", "keyrotor.testing.consumerapp", "acceptor",
                      "--mount", str(mount), "--port", str(port),
                      "--metrics-port", str(metrics_port)], log,
                     env={**os.environ, "PYTHONUNBUFFERED": "1", "POD_NAMESPACE": namespace,
                          "KEYROTOR_REPORT_URL": f"http://127.0.0.1:{operator.liveness_port}"})
    try:
        url = f"http://127.0.0.1:{port}/"

        def present(value: bytes) -> requests.Response:
            return requests.get(url, timeout=5, headers={
                "Authorization": f"Bearer {value.decode()}", "X-Client-Id": THIEF})

        def up() -> bool:
            try:
                return present(current).text == "current"
            except requests.RequestException:
                return False

        wait_for(up, timeout=30, what="the acceptor")
        prometheus.scrape("decoy-acceptor", f"127.0.0.1:{metrics_port}")
        # The counter at 0 first, so increase() sees the step to 1.
        wait_for(lambda: prometheus.query(
            f'keyrotor_client_decoy_presentations_total{{secret="{NAME}"}}'), timeout=30,
            what="Prometheus to scrape the acceptor")

        decoy = sorted(stolen.values())[0]
        answer = present(decoy)
        assert (answer.status_code, answer.text) == (401, "decoy")

        # The operator's Warning event on the RotatingSecret, naming fingerprint and identity.
        fingerprints = decoy_fingerprints(secret)

        def alarm() -> dict[str, Any] | None:
            return next((e for e in kapi.list_events(namespace, NAME)
                         if e["reason"] == "DecoyPresented"), None)

        event = wait_for(alarm, timeout=30, what="the DecoyPresented event")
        assert event["type"] == "Warning"
        assert event["involvedObject"]["kind"] == "RotatingSecret"
        named = [f for f in fingerprints if f in event["message"]]
        assert len(named) == 1 and THIEF in event["message"], event["message"]
        assert operator.metric("keyrotor_decoy_presentations_total", namespace=namespace,
                               name=NAME) == 1
        # The audit entry (the operator's audit trail on stdout): fingerprint and who.
        (entry,) = wait_for(lambda: audited(operator.log_text()), timeout=10,
                            what="the decoy.presented audit entry")
        assert entry["fingerprints"] == {"decoy": named[0]}
        assert entry["actor"] == f"presenter:{THIEF}" and entry["name"] == NAME
        consumer = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert metric(consumer, "keyrotor_client_decoy_presentations_total", secret=NAME) == 1
        assert metric(consumer, "keyrotor_client_decoy_reports_total", secret=NAME,
                      result="sent") == 1

        # The alert rule, evaluated by the real Prometheus on the scraped series.
        rule = {a.name: a for a in alerts.alerts()}["KeyrotorDecoyPresented"]

        def firing() -> list[dict[str, Any]]:
            return [r for r in prometheus.query(rule.expr)
                    if r["metric"].get("secret") == NAME]

        rows = wait_for(firing, timeout=30, what="KeyrotorDecoyPresented to fire")
        assert rows[0]["metric"]["job"] == "decoy-acceptor"

        # Reports that are not about a decoy of this RotatingSecret change nothing.
        real = json.loads(json.dumps(secret["metadata"]["annotations"]))
        real_fingerprint = real["keyrotor.io/current-fingerprint"]
        for fingerprint, name in ((real_fingerprint, NAME), ("hmac-sha256:" + "0" * 16, NAME),
                                  (sorted(fingerprints)[0], "nobody")):
            assert report(operator.liveness_port, {
                "namespace": namespace, "name": name, "fingerprint": fingerprint,
                "identity": "x"}) == 404
        assert report(operator.liveness_port, {"namespace": namespace}) == 400
        assert operator.metric("keyrotor_decoy_presentations_total", namespace=namespace,
                               name=NAME) == 1

        # A rotation keeps the decoys (a presenter's view never flickers); the acceptor still
        # knows them afterwards.
        kapi.annotate_rotating_secret(namespace, NAME, "keyrotor.io/rotate", "decoy-test")
        rotated = wait_for(lambda: (s := kapi.get_secret(namespace, NAME)) and json.loads(
            base64.b64decode(s["data"]["versions.json"])).get("current") == 2 and
            "previous" not in s["data"] and s, timeout=60, what="version 2 alone")
        remember_secret(rotated)
        assert set(decoys_in(rotated).values()) == set(stolen.values())
        assert all(int(n) != 2 for n in json.loads(
            base64.b64decode(rotated["data"]["versions.json"]))["retired"])
        new_current = base64.b64decode(rotated["data"]["current"])
        wait_for(lambda: present(new_current).text == "current", timeout=30,
                 what="the acceptor to follow the rotation")
        assert present(sorted(stolen.values())[1]).text == "decoy"

        # One more decoy asked for while idle: added at once, the others kept.
        control_plane.kubectl("patch", "rsec", NAME, "-n", namespace, "--type", "merge",
                              "-p", '{"spec": {"decoys": {"count": 3}}}')
        more = wait_for(lambda: (s := kapi.get_secret(namespace, NAME)) and
                        len(decoys_in(s)) == 3 and s, timeout=30, what="a third decoy")
        remember_secret(more)
        assert set(stolen.values()) < set(decoys_in(more).values())
        assert base64.b64decode(more["data"]["current"]) == new_current
    finally:
        stop(acceptor)
        mirror.stop()
    acceptor_log = log.read_text(errors="replace")
    print(f"---- acceptor log ----\n{acceptor_log[-5000:]}")
    assert "decoy hmac-sha256:" in acceptor_log  # it logged the fingerprint...
    for value in [*stolen.values(), current]:
        assert value.decode() not in acceptor_log  # ...never a value
    for value in stolen.values():
        assert value.decode() not in operator.log_text()


def test_a_standby_operator_answers_503_so_the_library_retries(
        control_plane: ControlPlane, crds: None, namespace: str, tmp_path: Path) -> None:
    """Two operators with leader election: the leader answers, the standby says 503; a
    flood from one source gets 429."""
    from tests.operator.conftest import scanned_operator

    args = ["--leader-elect", "--leader-election-namespace", namespace]
    (tmp_path / "a").mkdir()
    with scanned_operator(control_plane, namespace, tmp_path / "a",
                          extra_args=args) as first:
        wait_for(lambda: first.metric("keyrotor_leader") == 1, timeout=30, what="a leader")
        (tmp_path / "b").mkdir()
        with scanned_operator(control_plane, namespace, tmp_path / "b",
                              extra_args=args) as second:
            wait_for(lambda: json.loads(second.fetch(
                f"http://127.0.0.1:{second.liveness_port}/healthz") or "{}").get("role")
                == "standby", timeout=30, what="a standby")
            body = {"namespace": namespace, "name": "absent",
                    "fingerprint": "hmac-sha256:" + "0" * 16, "identity": "x"}
            assert report(second.liveness_port, body) == 503
            assert report(first.liveness_port, body) == 404  # the leader looks it up
            # A source that floods the endpoint is refused (20 at once, then one a second).
            answers = [report(first.liveness_port, body) for _ in range(25)]
            assert answers[:15] == [404] * 15 and answers[-1] == 429, answers
            assert (first.metric("keyrotor_decoy_reports_refused_total",
                                 reason="rate_limited") or 0) >= 1
