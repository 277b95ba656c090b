"""Zero downtime, proven with real processes: consumers built on keyrotor.client, each reading
its own kubelet-style mount of the Secret, a real Prometheus scraping them, and the operator
rotating at least five times on the real control plane.

The presenter sends a request every 20 ms with whatever its mounted Secret holds at that moment
and tallies what it saw fail. Its tally must show zero failures.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from keyrotor.kube import KubeApi
from keyrotor.testing.controlplane import ControlPlane, free_port
from keyrotor.testing.processes import spawn, stop
from keyrotor.testing.prometheusserver import PrometheusServer
from keyrotor.testing.secretmount import SecretMirror
from keyrotor.testing.waiting import wait_for
from tests.operator.conftest import OperatorProcess, remember_secret, rotating_secret
from tests.operator.helpers import (
    answers,
    events_of,
    start_key_service,
    stop_rotating,
    wait_reasons,
    wait_status,
)

ROTATIONS = 5


class Fleet:
    """Starts consumer processes and Secret mirrors; stops all of them at the end."""

    def __init__(self, tmp: Path, kapi: KubeApi, namespace: str) -> None:
        self.tmp, self.kapi, self.namespace = tmp, kapi, namespace
        self.procs: list[subprocess.Popen[bytes]] = []
        self.mirrors: list[SecretMirror] = []

    def mount(self, who: str, secret: str, period: float) -> Path:
        """A kubelet-style mount of ``secret`` for ``who``, ``period`` seconds behind."""
        root = self.tmp / who / secret
        mirror = SecretMirror(lambda: self.kapi.get_secret(self.namespace, secret), root,
                              period=period)
        wait_for(mirror.sync, timeout=60, what=f"Secret {secret} to exist")
        self.mirrors.append(mirror.start())
        return root

    def run(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        proc = spawn([sys.executable, "-m", *args], self.tmp / f"{name}.log")
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for proc in self.procs:
            stop(proc)
        for mirror in self.mirrors:
            mirror.stop()


@pytest.fixture
def fleet(tmp_path: Path, kapi: KubeApi, namespace: str) -> Iterator[Fleet]:
    f = Fleet(tmp_path, kapi, namespace)
    yield f
    f.close()


def presenter(fleet: Fleet, mount: Path, url: str, job: str, prometheus: PrometheusServer,
              *, fallback: bool) -> tuple[subprocess.Popen[bytes], Path]:
    metrics, stats = free_port(), fleet.tmp / "presenter.json"
    proc = fleet.run("presenter", "keyrotor.testing.consumerapp", "presenter",
                     "--mount", str(mount), "--url", url, "--metrics-port", str(metrics),
                     "--stats", str(stats), *(["--fallback"] if fallback else []))
    wait_for(lambda: stats.exists() and json.loads(stats.read_text()).get("sent", 0) > 0,
             timeout=30, what="the presenter's first request")
    prometheus.scrape(f"{job}-presenter", f"127.0.0.1:{metrics}")
    return proc, stats


def finish(proc: subprocess.Popen[bytes], stats: Path) -> dict[str, int]:
    stop(proc)
    tally: dict[str, int] = json.loads(stats.read_text())
    print(f"presenter tally: {tally}")
    return tally


def refusals(fleet: Fleet) -> list[str]:
    """The consumers' own account of each refusal (versions and digests, no values)."""
    return [f"{who}: {line}" for who in ("acceptor", "presenter")
            for line in fleet.log(who).splitlines() if '"held"' in line][:60]


def apply(plane: ControlPlane, namespace: str, manifest: str) -> None:
    plane.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)


def test_two_keys_zero_downtime(control_plane: ControlPlane, kapi: KubeApi, namespace: str,
                                operator: OperatorProcess, prometheus: PrometheusServer,
                                fleet: Fleet) -> None:
    """TwoKeys: the acceptor sees the Secret 0.5 s late, the presenter 1.5 s late. The operator
    presents a version only after the acceptor accepts it (http probe), and revokes the old one
    only after Prometheus shows every presenter holding the new version (the lagging presenter
    keeps presenting the old one for a while after each promotion)."""
    job = f"twokeys-{namespace}"
    apply(control_plane, namespace, rotating_secret(
        "api-key", strategy="TwoKeys", generator={"random": {"length": 32}},
        # Suspended until the consumers are declared: version 1 is issued anyway. Rotating
        # before would revoke version 1 after minOverlap with no probe to wait for, while the
        # presenter, 1.5 s behind, still presents it (that failed CI: 20 requests rejected).
        rotation={"every": "1s", "minOverlap": "1s", "maxOverlap": "2m", "suspend": True},
        verification={"interval": "500ms", "successesRequired": 2, "failureThreshold": 1}))
    acceptor_port, acceptor_metrics = free_port(), free_port()
    fleet.run("acceptor", "keyrotor.testing.consumerapp", "acceptor",
              "--mount", str(fleet.mount("acceptor", "api-key", period=0.5)),
              "--port", str(acceptor_port), "--metrics-port", str(acceptor_metrics))
    url = f"http://127.0.0.1:{acceptor_port}/"
    wait_for(answers(url), timeout=30, what="the acceptor")
    prometheus.scrape(f"{job}-acceptor", f"127.0.0.1:{acceptor_metrics}")
    proc, stats = presenter(fleet, fleet.mount("presenter", "api-key", period=1.5), url, job,
                            prometheus, fallback=False)
    for who in ("acceptor", "presenter"):
        wait_for(lambda w=who: prometheus.up(f"{job}-{w}"), timeout=30, what=f"{who} scraped")

    # Consumers are added now: the rotations below are verified by both probes.
    body = kapi.get_rotating_secret(namespace, "api-key")
    assert body is not None
    # 1 when every presenter's mounted Secret holds the new version as current. Prometheus
    # lags the presenters, never leads them: the answer may come late, never early.
    presenters_moved = (f'min(keyrotor_client_secret_version{{job="{job}-presenter",'
                        f'slot="current"}}) >= bool {{{{ candidate_version }}}}')
    control_plane.kubectl("patch", "rsec", "api-key", "-n", namespace, "--type=merge", "-p",
                          json.dumps({"spec": {"rotation": {"suspend": False}, "consumers": [
                              {"name": "acceptor", "http": {"url": url, "headers": {
                                  "Authorization": "Bearer {{ candidate }}"}}},
                              {"name": "fleet", "during": "Retirement", "prometheus": {
                                  "url": prometheus.url, "query": presenters_moved,
                                  "expect": "== 1"}}]}}))
    start = int(body.get("status", {}).get("rotationCount", 0))
    wait_status(kapi, namespace, "api-key",
                lambda s: s.get("rotationCount", 0) >= start + ROTATIONS, timeout=240,
                what=f"{ROTATIONS} rotations")
    tally = finish(proc, stats)
    remember_secret(kapi.get_secret(namespace, "api-key"))

    print("\n".join(refusals(fleet)))
    assert tally.get("failed", 0) == 0, tally
    assert tally["sent"] > 200, tally
    # Over a range: the stopped presenter's series are stale now.
    reloads = prometheus.query(
        f'max_over_time(keyrotor_client_reloads_total{{job="{job}-presenter"}}[10m])')
    assert float(reloads[0]["value"][1]) >= ROTATIONS
    reasons = wait_reasons(kapi, namespace, "api-key",
                           lambda r: r.count("Revoked") >= ROTATIONS)
    # The fleet probe mattered: after a promotion it saw a presenter still on the old version,
    # and the rotation waited for it (a revocation always follows its Retired verdict).
    fleet_messages = [e["message"] for e in events_of(kapi, namespace, "api-key")
                      if e["reason"] == "ConsumerFailing"]
    assert any("consumer fleet: query = 0, expected == 1" in m for m in fleet_messages), \
        fleet_messages
    # The acceptor saw the old version presented during overlaps, and accepted it.
    rows = prometheus.query(f'max_over_time(keyrotor_client_verifications_total'
                            f'{{job="{job}-acceptor",slot="previous"}}[10m])')
    assert sum(float(r["value"][1]) for r in rows) > 0
    # (slot="none" is not zero: the operator's probe tries each candidate before the lagging
    # acceptor has loaded it. Those are probe rounds failing, not requests.)
    for i, reason in enumerate(reasons):
        if reason == "Revoked" and i > 1:
            assert "Retired" in reasons[:i]


def test_one_key_zero_downtime_through_the_fallback(
        control_plane: ControlPlane, kapi: KubeApi, namespace: str, operator: OperatorProcess,
        prometheus: PrometheusServer, fleet: Fleet) -> None:
    """OneKey against a service that holds exactly one key (the webhook target in one-key
    mode). Presenters get the new key as current first and fall back to previous while the
    service rejects it. The presenter sees the Secret 1.5 s late and activateAfter is 0: the
    operator swaps the service only when Prometheus shows every presenter holding the new key
    (a ``during: Activation`` probe), and revokes previous only when Prometheus shows no
    rejected presentation of the new version any more."""
    job = f"onekey-{namespace}"
    proc, service, token = start_key_service(fleet.tmp, "one")
    fleet.procs.append(proc)
    kapi.core.create_namespaced_secret(namespace, {
        "metadata": {"name": "keyservice-admin"},
        "data": {"token": base64.b64encode(token.encode()).decode()}})
    presenters_hold = (f'min(keyrotor_client_secret_version{{job="{job}-presenter",'
                       f'slot="current"}}) >= bool {{{{ candidate_version }}}}')
    rejected_new = (f'sum(increase(keyrotor_client_presentations_total{{job="{job}-presenter",'
                    f'version="{{{{ candidate_version }}}}",result="rejected"}}[3s])) or vector(0)')
    apply(control_plane, namespace, rotating_secret(
        "service-key", strategy="OneKey", generator={"random": {"length": 32}},
        rotation={"every": "1s", "minOverlap": "1s", "maxOverlap": "2m"},
        verification={"interval": "500ms", "successesRequired": 2, "failureThreshold": 1},
        target={"activateAfter": "0s", "webhook": {
            "url": service, "authSecretRef": {"name": "keyservice-admin"}}},
        consumers=[{"name": "presenters", "during": "Activation", "prometheus": {
                       "url": prometheus.url, "query": presenters_hold, "expect": "== 1"}},
                   {"name": "service", "target": {}},
                   {"name": "fleet", "prometheus": {"url": prometheus.url,
                                                    "query": rejected_new}}]))
    wait_status(kapi, namespace, "service-key", lambda s: s.get("currentVersion") == 1,
                what="version 1")
    proc, stats = presenter(fleet, fleet.mount("presenter", "service-key", period=1.5),
                            f"{service}/api", job, prometheus, fallback=True)
    wait_for(lambda: prometheus.up(f"{job}-presenter"), timeout=30, what="presenter scraped")
    start = int((kapi.get_rotating_secret(namespace, "service-key") or {})
                .get("status", {}).get("rotationCount", 0))
    wait_status(kapi, namespace, "service-key",
                lambda s: s.get("rotationCount", 0) >= start + ROTATIONS, timeout=300,
                what=f"{ROTATIONS} rotations while the presenter is watched")
    # Stop rotating while the presenter still runs: a rotation waiting to activate waits for
    # it (without presenters holding the new key, the swap would never be safe).
    status = stop_rotating(control_plane, kapi, namespace, "service-key")
    tally = finish(proc, stats)
    remember_secret(kapi.get_secret(namespace, "service-key"))

    assert tally.get("failed", 0) == 0, tally
    assert tally["sent"] > 200, tally
    # Failures at the target happened, were absorbed by the fallback, and were counted.
    rows = prometheus.query(f'max_over_time(keyrotor_client_presentations_total'
                            f'{{job="{job}-presenter"}}[10m])')
    counts: dict[tuple[str, str], float] = {}
    for r in rows:
        key = (r["metric"]["slot"], r["metric"]["result"])
        counts[key] = counts.get(key, 0.0) + float(r["value"][1])
    assert counts.get(("current", "rejected"), 0) > 0, counts
    assert counts.get(("previous", "accepted"), 0) > 0, counts
    reasons = wait_reasons(kapi, namespace, "service-key",
                           lambda r: r.count("Revoked") >= ROTATIONS)
    events = events_of(kapi, namespace, "service-key")
    assert reasons.count("Activated") >= ROTATIONS
    assert reasons.count("Revoked") >= ROTATIONS
    # Each revocation came after the swap and after the fleet query read zero.
    for i, reason in enumerate(reasons):
        if reason == "Revoked":
            before = reasons[:i]
            last_activated = max(j for j, r in enumerate(before) if r == "Activated")
            assert "Retired" in before[last_activated:], reasons
    assert any("consumer fleet: query = " in e["message"] for e in events
               if e["reason"] == "ConsumerFailing")
    keys = requests.get(f"{service}/keys", timeout=5).json()
    assert keys["versions"] == [status["currentVersion"]]  # one key, the current one

