"""Two operator processes with leader election: SIGKILL the leader in the middle of a rotation,
three times; the standby takes over within the Lease duration and finishes the rotation, with no
version skipped or duplicated and the Secret never empty. The standby makes no writes but its
attempts on the Lease."""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

from kubernetes import client

from keyrotor.kube import KubeApi
from keyrotor.leadership import REPORT_URL_ANNOTATION
from keyrotor.publishing.secret import decoy_fingerprints
from keyrotor.testing.controlplane import ControlPlane
from keyrotor.testing.waiting import wait_for
from tests.operator.conftest import OperatorProcess, remember_secret, rotating_secret
from tests.operator.helpers import (
    SecretWitness,
    SwitchableConsumer,
    await_status,
    decoy_report,
)

LEASE = ("--lease-duration", "4", "--renew-deadline", "3", "--retry-period", "0.5")
KILLS = 3  # bench/ha_takeover.py measures more, with the chart's timings
WRITE = re.compile(r'"(POST|PUT|PATCH|DELETE) (\S+)')


def replica(plane: ControlPlane, namespace: str, tmp: Path, identity: str) -> OperatorProcess:
    return OperatorProcess(
        kubeconfig=plane.kubeconfig, namespace=namespace, log_path=tmp / f"{identity}.log",
        phase_pause=0.5,
        extra_args=["--leader-elect", "--leader-election-namespace", namespace,
                    "--leader-election-identity", identity, *LEASE])


def holder(kube: client.ApiClient, namespace: str) -> str | None:
    lease = client.CoordinationV1Api(kube).read_namespaced_lease("keyrotor", namespace)
    return lease.spec.holder_identity  # type: ignore[no-any-return]


def writes_before_leading(log: str) -> list[str]:
    """The write requests a replica made while it was a standby (its log up to 'leading')."""
    standby = log.split("leading as ", 1)[0]
    return [f"{m.group(1)} {m.group(2)}" for m in WRITE.finditer(standby)]


async def test_standby_takes_over_mid_rotation(
    control_plane: ControlPlane, crds: None, kube: client.ApiClient, kapi: KubeApi,
    namespace: str, tmp_path: Path,
) -> None:
    target = SwitchableConsumer()
    url = await target.start()
    replicas = {name: replica(control_plane, namespace, tmp_path, name) for name in "ab"}
    replicas["a"].start()
    wait_for(lambda: replicas["a"].metric("keyrotor_leader") == 1, timeout=30,
             what="replica a to lead")
    replicas["b"].start()
    witness = SecretWitness(kube, namespace, "ha").start()
    takeovers: list[float] = []
    try:
        control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=rotating_secret(
            "ha", rotation={"minOverlap": "1s", "maxOverlap": "5m"},
            verification={"interval": "200ms", "successesRequired": 2},
            generator={"random": {"length": 24}},
            consumers=[{"name": "api", "http": {"url": url}}]))
        await await_status(kapi, namespace, "ha", lambda s: s.get("currentVersion") == 1)
        standby_log = replicas["b"].log_text()
        assert "standing by" in standby_log
        assert "GET /apis/coordination.k8s.io/v1/namespaces/" in standby_log  # it watches
        assert all("/leases" in w for w in writes_before_leading(standby_log)), \
            writes_before_leading(standby_log)  # and writes nothing but the Lease
        assert replicas["b"].metric("keyrotor_leader") == 0

        for kill in range(1, KILLS + 1):
            leader = holder(kube, namespace)
            assert leader in replicas
            standby = "b" if leader == "a" else "a"
            kapi.annotate_rotating_secret(namespace, "ha", "keyrotor.io/rotate", f"ha-{kill}")
            # Mid-rotation: the new version is staged or already presented.
            await await_status(kapi, namespace, "ha", lambda s, k=kill: s.get("phase") in (
                "VerifyingAcceptance", "Promoting", "VerifyingRetirement")
                and s.get("latestVersion") == k + 1, within=30, what="a rotation under way")
            replicas[leader].kill()
            killed_at = time.monotonic()
            wait_for(lambda s=standby: replicas[s].metric("keyrotor_leader") == 1, timeout=15,
                     interval=0.05, what=f"replica {standby} to take over")
            takeovers.append(time.monotonic() - killed_at)
            status = await await_status(kapi, namespace, "ha",
                                        lambda s, k=kill: s.get("rotationCount") == k,
                                        within=60, what=f"rotation {kill} to finish")
            assert status["currentVersion"] == kill + 1 and status["phase"] == "Idle"
            assert holder(kube, namespace) == standby
            replicas[leader].start()  # back as the standby

        leader_changes = sum(r.metric("keyrotor_leader_changes_total") or 0
                             for r in replicas.values())
        assert leader_changes >= 1
    finally:
        witness.stop()
        for r in replicas.values():
            r.stop()
        await target.stop()
    print(f"takeover after SIGKILL over {KILLS} kills (lease 4s, retry 0.5s): "
          f"median {statistics.median(takeovers):.2f}s, max {max(takeovers):.2f}s, "
          f"all {[round(t, 2) for t in takeovers]}")
    assert not witness.problems, witness.problems
    # Versions only go up, by one per rotation: none skipped, none issued twice.
    assert witness.currents == list(range(1, KILLS + 2))
    assert max(takeovers) <= 4 + 1.5  # within the lease duration, plus a retry and a scrape


def test_a_standby_hands_decoy_reports_on_to_the_leader(
    control_plane: ControlPlane, crds: None, kube: client.ApiClient, kapi: KubeApi,
    namespace: str, tmp_path: Path,
) -> None:
    """The chart's Service spreads reports over every replica: the one that reaches the
    standby is handed on to the leader at the address on its Lease, and recorded there once
    (it was refused with 503 before, so with two replicas one report in 64 was lost)."""
    replicas = {name: replica(control_plane, namespace, tmp_path, name) for name in "ab"}
    for r in replicas.values():
        r.extra_args += ["--advertise-url", f"http://127.0.0.1:{r.liveness_port}"]
    try:
        replicas["a"].start()
        wait_for(lambda: replicas["a"].metric("keyrotor_leader") == 1, timeout=30,
                 what="replica a to lead")
        replicas["b"].start()
        lease = client.CoordinationV1Api(kube).read_namespaced_lease("keyrotor", namespace)
        assert lease.metadata.annotations[REPORT_URL_ANNOTATION] == \
            f"http://127.0.0.1:{replicas['a'].liveness_port}"
        control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=rotating_secret(
            "lure", generator={"random": {"length": 32}}, decoys={"count": 1}))
        secret = wait_for(lambda: (s := kapi.get_secret(namespace, "lure")) and
                          decoy_fingerprints(s) and s, timeout=60, what="a Secret with a decoy")
        remember_secret(secret)
        (fingerprint,) = decoy_fingerprints(secret)
        body = {"namespace": namespace, "name": "lure", "fingerprint": fingerprint,
                "identity": "203.0.113.9"}
        standby = replicas["b"].liveness_port

        assert decoy_report(standby, body) == (202, {"status": 202, "message": "recorded"})
        event = wait_for(lambda: next((e for e in kapi.list_events(namespace, "lure")
                                       if e["reason"] == "DecoyPresented"), None),
                         timeout=30, what="the DecoyPresented event")
        assert "203.0.113.9" in event["message"]
        assert '"decoy.presented"' in replicas["a"].log_text()  # the leader's audit trail
        assert '"decoy.presented"' not in replicas["b"].log_text()
        assert replicas["a"].metric("keyrotor_decoy_presentations_total", namespace=namespace,
                                    name="lure") == 1
        assert replicas["b"].metric("keyrotor_decoy_reports_forwarded_total", code="202") == 1
        # The leader's refusals come back as they are; a handed-on report is never handed on
        # again (no loop between two standbys).
        unknown = {**body, "fingerprint": "hmac-sha256:0000000000000000"}
        assert decoy_report(standby, unknown)[0] == 404
        assert decoy_report(standby, body, **{"X-Keyrotor-Forwarded-For": "10.0.0.1"})[0] == 503
    finally:
        for r in replicas.values():
            r.stop()
