"""SIGKILL the operator at every phase boundary: no version is skipped, duplicated or lost.

The operator runs in slow motion (``--phase-pause``), so each persisted phase lasts a moment;
the test kills it the instant the phase shows up in a watch, before the phase's effect runs,
then starts a new operator process that must resume from the status alone.
"""

from __future__ import annotations

import asyncio

from kubernetes import client, watch

from keyrotor.kube import GROUP, PLURAL, VERSION, KubeApi
from keyrotor.testing.controlplane import ControlPlane
from tests.operator.conftest import OperatorProcess, rotating_secret
from tests.operator.helpers import SecretWitness, SwitchableConsumer, await_status, events_of

BOUNDARIES = ("Generating", "VerifyingAcceptance", "Promoting", "VerifyingRetirement",
              "Revoking", "Idle")


def kill_when_phase(kube: client.ApiClient, namespace: str, name: str, phase: str,
                    operator: OperatorProcess, after_version: int, since: str) -> None:
    """Watch the RotatingSecret from resourceVersion ``since`` (so no change is missed, however
    late the watch connects); SIGKILL the operator as soon as ``phase`` is persisted."""
    api = client.CustomObjectsApi(kube)
    w = watch.Watch()
    for event in w.stream(api.list_namespaced_custom_object, GROUP, VERSION, namespace,
                          PLURAL, field_selector=f"metadata.name={name}",
                          resource_version=since, timeout_seconds=60):
        status = event["object"].get("status") or {}
        if status.get("phase") == phase and (status.get("latestVersion") or 0) > after_version:
            operator.kill()
            w.stop()
            return
    raise AssertionError(f"phase {phase} never seen")


async def test_sigkill_at_every_phase_boundary(
    control_plane: ControlPlane, kube: client.ApiClient, kapi: KubeApi, namespace: str,
    operator: OperatorProcess,
) -> None:
    target = SwitchableConsumer()
    url = await target.start()
    operator.slow_motion(1.0)
    witness = SecretWitness(kube, namespace, "crashy").start()
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=rotating_secret(
        "crashy", rotation={"minOverlap": "1s", "maxOverlap": "5m"},
        verification={"interval": "200ms", "successesRequired": 2},
        generator={"keyPair": {"algorithm": "Ed25519"}},
        consumers=[{"name": "api", "http": {"url": url}}]))
    try:
        await await_status(kapi, namespace, "crashy", lambda s: s.get("currentVersion") == 1)
        for rotation, phase in enumerate(BOUNDARIES, start=1):
            obj = kapi.get_rotating_secret(namespace, "crashy")
            assert obj is not None
            since = obj["metadata"]["resourceVersion"]
            kapi.annotate_rotating_secret(namespace, "crashy", "keyrotor.io/rotate",
                                          f"crash-{rotation}")
            await asyncio.to_thread(kill_when_phase, kube, namespace, "crashy", phase, operator,
                                    rotation, since)
            operator.start()
            await await_status(
                kapi, namespace, "crashy",
                lambda s, r=rotation: s.get("rotationCount") == r and s.get("phase") == "Idle",
                within=60, what=f"rotation {rotation} finished after a kill in {phase}")
    finally:
        witness.stop()
        await target.stop()

    final = await await_status(kapi, namespace, "crashy", lambda s: True)
    rotations = len(BOUNDARIES)
    assert final["currentVersion"] == rotations + 1
    assert final["latestVersion"] == rotations + 1  # no number was allocated twice or skipped
    assert final.get("previousVersion") is None and final.get("nextVersion") is None
    assert witness.problems == []
    assert witness.currents == list(range(1, rotations + 2))
    assert sorted(witness.values) == list(range(1, rotations + 2))
    events = events_of(kapi, namespace, "crashy")
    promoted = [int(e["message"].split()[1]) for e in events if e["reason"] == "Promoted"]
    # Events are posted before the status write and named by (RotatingSecret, reason,
    # version): a kill between the two replays the step, whose event is then found posted.
    # Every step of every rotation is announced exactly once.
    assert promoted == list(range(2, rotations + 2))
    reasons = [e["reason"] for e in events]
    assert reasons.count("RotationStarted") == rotations  # the first version has Issued only
    for reason in ("Staged", "Accepted", "Promoted", "Retired", "Revoked"):
        assert reasons.count(reason) == rotations, reason
    secret = kapi.get_secret(namespace, "crashy")
    assert secret is not None
    assert set(secret["data"]) == {"current", "current.pub", "current.jwk", "current.pub.jwk",
                                   "jwks.json", "fingerprint.key", "versions.json"}
