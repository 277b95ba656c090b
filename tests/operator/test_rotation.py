"""The operator, for real: a kopf process against the real control plane, rotating Secrets.

Times are second-scale so a whole rotation takes seconds; the engine's hours-long schedules are
covered with an injected clock in tests/engine.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys

from kubernetes import client

from keyrotor.kube import KubeApi
from keyrotor.testing.controlplane import ControlPlane
from keyrotor.testing.democonsumer import Acceptor, Presenter
from keyrotor.testing.waiting import wait_for
from tests.operator.conftest import OperatorProcess, remember_secret, rotating_secret
from tests.operator.helpers import (
    SecretWitness,
    SwitchableConsumer,
    await_status,
    condition,
    events_of,
    wait_reasons,
    wait_status,
)

FAST = {"minOverlap": "2s", "maxOverlap": "1m"}
VERIFY = {"interval": "300ms", "successesRequired": 2}


def apply(plane: ControlPlane, namespace: str, manifest: str) -> None:
    plane.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)


def consumer(url: str, name: str = "api") -> dict[str, object]:
    return {"name": name, "http": {"url": url,
                                   "headers": {"Authorization": "Bearer {{ candidate }}"}}}


def test_first_version_is_issued(control_plane: ControlPlane, kapi: KubeApi, namespace: str,
                                 operator: OperatorProcess) -> None:
    apply(control_plane, namespace, rotating_secret(
        "first", generator={"random": {"length": 24, "encoding": "hex"}}))
    status = wait_status(kapi, namespace, "first", lambda s: s.get("currentVersion") == 1,
                         what="version 1")
    assert status["phase"] == "Idle"
    assert condition(status, "Ready")["status"] == "True"
    assert "nextRotationTime" not in status  # rotates only on demand
    secret = kapi.get_secret(namespace, "first")
    assert secret is not None
    remember_secret(secret)
    meta = secret["metadata"]
    assert meta["annotations"]["keyrotor.io/current-version"] == "1"
    assert meta["annotations"]["keyrotor.io/current-fingerprint"].startswith("hmac-sha256:")
    # deletionPolicy Retain (the default): no ownerReference for a garbage collector to act on;
    # the owner annotation marks it as this RotatingSecret's.
    assert not meta.get("ownerReferences")
    owner = kapi.get_rotating_secret(namespace, "first")
    assert owner is not None
    assert meta["annotations"]["keyrotor.io/owner-uid"] == owner["metadata"]["uid"]
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "keyrotor"
    value = base64.b64decode(secret["data"]["current"]).decode()
    assert len(value) == 48 and all(c in "0123456789abcdef" for c in value)
    assert set(secret["data"]) == {"current", "fingerprint.key", "versions.json"}
    # Events are posted after the status write they describe: wait for them, then compare.
    reasons = wait_reasons(kapi, namespace, "first", lambda r: "Issued" in r)
    assert reasons == ["Issued"]  # one event for a new object
    health = json.loads(operator.fetch(f"http://127.0.0.1:{operator.liveness_port}/healthz"))
    assert health == {"status": "ok", "role": "single"}  # no leader election asked for
    assert operator.metric("keyrotor_build_info", version="0.1.0") == 1
    printed = control_plane.kubectl("get", "rsec", "-n", namespace).stdout
    assert "first" in printed.splitlines()[1] and "Idle" in printed


async def test_zero_downtime_with_lagging_acceptor(
    control_plane: ControlPlane, kube: client.ApiClient, kapi: KubeApi, namespace: str,
    operator: OperatorProcess,
) -> None:
    """The presenter switches the moment `current` changes; the acceptor sees every change
    1.5 s late. Across three scheduled rotations, not one request is rejected."""
    def read() -> dict[str, object] | None:
        return kapi.get_secret(namespace, "api-key")

    acceptor = Acceptor(read, lag=1.5)
    url = await acceptor.start()
    witness = SecretWitness(kube, namespace, "api-key").start()
    apply(control_plane, namespace, rotating_secret(
        "api-key", rotation={"every": "6s", **FAST}, verification=VERIFY,
        generator={"random": {"length": 32}}, consumers=[consumer(url)]))
    await await_status(kapi, namespace, "api-key", lambda s: s.get("currentVersion") == 1)
    # The very first version has nothing to overlap with: start presenting once the acceptor
    # has it. From here on, every change is a rotation and must cost nothing.
    await asyncio.to_thread(wait_for, lambda: "current" in acceptor.slots_held,
                            what="acceptor loaded version 1")
    presenter = Presenter(read, url, lag=0.0, period=0.02)
    presenter.start()
    try:
        status = await await_status(kapi, namespace, "api-key",
                                    lambda s: s.get("rotationCount", 0) >= 3, within=120,
                                    what="three rotations")
    finally:
        await presenter.stop()
        await acceptor.stop()
        witness.stop()
    assert presenter.rejected == 0, f"{presenter.rejected} of {presenter.sent} rejected"
    assert presenter.sent > 100
    assert len(presenter.versions_seen) >= 4
    assert status["currentVersion"] >= 4 and status["latestVersion"] == status["currentVersion"]
    assert witness.problems == []
    assert witness.currents == list(range(1, witness.currents[-1] + 1))
    reasons = wait_reasons(kapi, namespace, "api-key", lambda r: r.count("Revoked") >= 3)
    for reason in ("RotationStarted", "Staged", "Accepted", "Promoted", "Retired", "Revoked"):
        assert reasons.count(reason) >= 3
    assert (operator.metric("keyrotor_rotations_total", namespace=namespace, name="api-key",
                            result="succeeded") or 0) >= 3


def test_manual_rotation_with_the_cli(control_plane: ControlPlane, kapi: KubeApi,
                                      namespace: str, operator: OperatorProcess) -> None:
    apply(control_plane, namespace, rotating_secret(
        "manual", rotation={**FAST, "minOverlap": "1s"},
        generator={"symmetric": {"algorithm": "AES-256"}}))
    # Once issued, the next reconcile explains why nothing is scheduled.
    wait_status(kapi, namespace, "manual",
                lambda s: s.get("message") == "no schedule; rotates only on demand")
    secret = kapi.get_secret(namespace, "manual")
    remember_secret(secret)
    cli = subprocess.run(
        [sys.executable, "-m", "keyrotor", "rotate", "manual", "-n", namespace,
         "--kubeconfig", str(control_plane.kubeconfig)], capture_output=True, text=True,
        check=True)
    assert f"rotation of {namespace}/manual requested" in cli.stdout
    status = wait_status(kapi, namespace, "manual",
                         lambda s: s.get("rotationCount") == 1, what="one rotation")
    assert status["currentVersion"] == 2 and status.get("previousVersion") is None
    started = [e["message"] for e in events_of(kapi, namespace, "manual")
               if e["reason"] == "RotationStarted"]
    assert any("ManualTrigger" in m for m in started)
    after = kapi.get_secret(namespace, "manual")
    remember_secret(after)
    assert after is not None and secret is not None
    assert after["data"]["current"] != secret["data"]["current"]
    assert len(base64.b64decode(after["data"]["current"])) == 32

    table = subprocess.run(
        [sys.executable, "-m", "keyrotor", "status", "-n", namespace,
         "--kubeconfig", str(control_plane.kubeconfig)], capture_output=True, text=True,
        check=True).stdout
    row = next(line for line in table.splitlines() if line.split()[:2] == [namespace, "manual"])
    assert row.split()[2:4] == ["manual", "2"]
    assert "yes" in row and "Idle" in row


async def test_failing_consumer_holds_then_recovers(
    control_plane: ControlPlane, kube: client.ApiClient, kapi: KubeApi, namespace: str,
    operator: OperatorProcess,
) -> None:
    target = SwitchableConsumer()
    url = await target.start()
    witness = SecretWitness(kube, namespace, "held").start()
    try:
        apply(control_plane, namespace, rotating_secret(
            "held", rotation={"minOverlap": "1s", "maxOverlap": "3s"}, verification=VERIFY,
            generator={"random": {}}, consumers=[consumer(url)]))
        await await_status(kapi, namespace, "held", lambda s: s.get("currentVersion") == 1)
        target.healthy = False
        kapi.annotate_rotating_secret(namespace, "held", "keyrotor.io/rotate", "1")
        status = await await_status(kapi, namespace, "held",
                                    lambda s: s.get("phase") == "Holding", what="Holding")
        degraded = condition(status, "Degraded")
        assert degraded["status"] == "True" and degraded["reason"] == "Holding"
        assert "consumer api: HTTP 401 (expected 200)" in degraded["message"]
        assert condition(status, "ConsumersVerified")["status"] == "False"
        assert status["currentVersion"] == 1 and status["nextVersion"] == 2
        assert status["consumers"][0]["ok"] is False
        secret = kapi.get_secret(namespace, "held")
        assert secret is not None
        assert secret["metadata"]["annotations"]["keyrotor.io/current-version"] == "1"
        await asyncio.to_thread(wait_for, lambda: operator.metric(
            "keyrotor_rotation_holding", namespace=namespace, name="held") == 1,
            what="holding metric")
        warnings = {e["reason"] for e in events_of(kapi, namespace, "held")
                    if e["type"] == "Warning"}
        assert {"ConsumerFailing", "Holding"} <= warnings

        target.healthy = True
        status = await await_status(kapi, namespace, "held",
                                    lambda s: s.get("rotationCount") == 1, what="recovery")
    finally:
        await target.stop()
        witness.stop()
    assert status["currentVersion"] == 2 and status.get("previousVersion") is None
    assert condition(status, "Degraded")["status"] == "False"
    assert operator.metric("keyrotor_rotation_holding", namespace=namespace, name="held") == 0
    reasons = wait_reasons(kapi, namespace, "held", lambda r: "Revoked" in r)
    assert "ConsumersRecovered" in reasons
    assert witness.problems == []


async def test_spec_edits_mid_rotation(control_plane: ControlPlane, kapi: KubeApi,
                                       namespace: str, operator: OperatorProcess) -> None:
    """A consumer added while a version is staged must pass before promotion."""
    first, second = SwitchableConsumer(), SwitchableConsumer(healthy=False)
    url1, url2 = await first.start(), await second.start()
    try:
        apply(control_plane, namespace, rotating_secret(
            "edited", rotation={"minOverlap": "1s", "maxOverlap": "10m"},
            verification={"interval": "300ms", "successesRequired": 50},
            generator={"random": {}}, consumers=[consumer(url1)]))
        await await_status(kapi, namespace, "edited", lambda s: s.get("currentVersion") == 1)
        kapi.annotate_rotating_secret(namespace, "edited", "keyrotor.io/rotate", "go")
        await await_status(kapi, namespace, "edited",
                           lambda s: s.get("phase") == "VerifyingAcceptance")
        apply(control_plane, namespace, rotating_secret(
            "edited", rotation={"minOverlap": "1s", "maxOverlap": "10m"}, verification=VERIFY,
            generator={"random": {}}, consumers=[consumer(url1), consumer(url2, "late")]))
        status = await await_status(
            kapi, namespace, "edited",
            lambda s: any(c["name"] == "late" and not c["ok"] for c in s.get("consumers", [])),
            what="the new consumer probed")
        assert status["phase"] == "VerifyingAcceptance" and status["currentVersion"] == 1
        assert second.requests > 0
        second.healthy = True
        status = await await_status(kapi, namespace, "edited",
                                    lambda s: s.get("rotationCount") == 1)
    finally:
        await first.stop()
        await second.stop()
    assert status["currentVersion"] == 2
    assert status["observedGeneration"] == 2


def test_deletion_policies(control_plane: ControlPlane, kapi: KubeApi, namespace: str,
                           operator: OperatorProcess) -> None:
    for name, policy in (("kept", "Retain"), ("gone", "Delete")):
        apply(control_plane, namespace, rotating_secret(
            name, deletionPolicy=policy, generator={"random": {}}))
        wait_status(kapi, namespace, name, lambda s: s.get("currentVersion") == 1)
        remember_secret(kapi.get_secret(namespace, name))
    gone = kapi.get_secret(namespace, "gone")
    assert gone is not None
    assert [r["kind"] for r in gone["metadata"]["ownerReferences"]] == ["RotatingSecret"]
    # A change of policy rewrites the marks: Delete -> Retain drops the ownerReference.
    control_plane.kubectl("patch", "rsec", "gone", "-n", namespace, "--type=merge",
                          "-p", '{"spec": {"deletionPolicy": "Retain"}}')
    wait_for(lambda: not (kapi.get_secret(namespace, "gone") or {"metadata": {
        "ownerReferences": [1]}})["metadata"].get("ownerReferences"), what="marks rewritten")
    control_plane.kubectl("patch", "rsec", "gone", "-n", namespace, "--type=merge",
                          "-p", '{"spec": {"deletionPolicy": "Delete"}}')
    wait_for(lambda: (kapi.get_secret(namespace, "gone") or {"metadata": {}})["metadata"].get(
        "ownerReferences"), what="ownerReference back")
    control_plane.kubectl("delete", "rsec", "kept", "gone", "-n", namespace, "--wait=true",
                          "--timeout=60s")
    kept = kapi.get_secret(namespace, "kept")
    assert kept is not None
    assert kept["metadata"].get("ownerReferences") in (None, [])
    assert "current" in kept["data"]
    wait_for(lambda: kapi.get_secret(namespace, "gone") is None, what="Secret deleted")


def test_secret_owned_by_someone_else(control_plane: ControlPlane, kapi: KubeApi,
                                      namespace: str, operator: OperatorProcess) -> None:
    control_plane.kubectl("create", "secret", "generic", "taken", "-n", namespace,
                          "--from-literal=password=hunter2-not-ours")
    apply(control_plane, namespace, rotating_secret("taken", generator={"random": {}}))
    status = wait_status(kapi, namespace, "taken",
                         lambda s: condition(s, "Degraded").get("status") == "True")
    degraded = condition(status, "Degraded")
    assert degraded["reason"] == "SecretConflict"
    assert "already exists and is owned by nobody" in degraded["message"]
    assert "spec.secretName" in degraded["message"]
    assert condition(status, "Ready")["status"] == "False"
    secret = kapi.get_secret(namespace, "taken")
    assert secret is not None and set(secret["data"]) == {"password"}
    wait_reasons(kapi, namespace, "taken", lambda r: "SecretConflict" in r)
    warnings = [e for e in events_of(kapi, namespace, "taken") if e["type"] == "Warning"]
    assert len(warnings) == 1 and warnings[0]["reason"] == "SecretConflict"

    # Once the foreign Secret is gone, keyrotor takes the name and recovers.
    control_plane.kubectl("delete", "secret", "taken", "-n", namespace)
    status = wait_status(kapi, namespace, "taken", lambda s: s.get("currentVersion") == 1)
    assert condition(status, "Degraded")["status"] == "False"


def test_unreachable_consumer_shows_in_status(control_plane: ControlPlane, kapi: KubeApi,
                                              namespace: str,
                                              operator: OperatorProcess) -> None:
    apply(control_plane, namespace, rotating_secret(
        "lonely", generator={"random": {}}, verification=VERIFY,
        consumers=[consumer("http://127.0.0.1:9/nothing-listens-here")]))
    wait_status(kapi, namespace, "lonely", lambda s: s.get("currentVersion") == 1)
    kapi.annotate_rotating_secret(namespace, "lonely", "keyrotor.io/rotate", "now")
    status = wait_status(kapi, namespace, "lonely", lambda s: bool(s.get("consumers")))
    result = status["consumers"][0]
    assert result["ok"] is False and "request failed" in result["message"]
    verified = condition(status, "ConsumersVerified")
    assert verified["status"] == "False" and verified["reason"] == "ConsumersFailing"
    assert status["currentVersion"] == 1
    # The Warning comes after failureThreshold (3) failed rounds in a row.
    warnings = wait_for(lambda: [e for e in events_of(kapi, namespace, "lonely")
                                 if e["type"] == "Warning"], what="a Warning event")
    assert warnings[0]["reason"] == "ConsumerFailing"
    assert status["consumers"][0]["consecutiveFailures"] >= 1
    assert "consumer api: request failed" in warnings[0]["message"]


def test_one_key_without_a_target_promotes_directly(
        control_plane: ControlPlane, kube: client.ApiClient, kapi: KubeApi, namespace: str,
        operator: OperatorProcess) -> None:
    """OneKey: the new version goes straight to current with the old one as previous (never
    staged as next), and previous is removed after minOverlap."""
    witness = SecretWitness(kube, namespace, "one").start()
    try:
        apply(control_plane, namespace, rotating_secret(
            "one", strategy="OneKey", generator={"random": {"length": 24}},
            rotation={"minOverlap": "1s", "maxOverlap": "1m"}))
        wait_status(kapi, namespace, "one", lambda s: s.get("currentVersion") == 1)
        for n in (1, 2):
            kapi.annotate_rotating_secret(namespace, "one", "keyrotor.io/rotate", f"r{n}")
            wait_status(kapi, namespace, "one", lambda s, n=n: s.get("rotationCount") == n
                        and s.get("phase") == "Idle", what=f"rotation {n}")
    finally:
        witness.stop()
    assert not witness.problems, witness.problems
    assert witness.currents == [1, 2, 3]
    assert witness.slots_seen == {"current", "previous"}  # never staged
    reasons = [e["reason"] for e in events_of(kapi, namespace, "one")]
    assert reasons.count("Promoted") == 2 and "Staged" not in reasons
    assert "Activated" not in reasons  # no target to swap
