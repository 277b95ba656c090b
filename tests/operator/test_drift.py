"""A Secret deleted or edited by hand, against the real control plane: the operator's
metadata-only Secret watch notices within seconds, the Secret comes back with a working current
version (a new number: random material cannot be recovered), the status shows Degraded
SecretDrift and then recovers, and one Warning event says what was found and done."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from keyrotor.kube import KubeApi
from keyrotor.publishing.secret import decode
from keyrotor.testing.controlplane import ControlPlane
from keyrotor.testing.waiting import wait_for
from tests.operator.conftest import OperatorProcess, remember_secret, rotating_secret
from tests.operator.helpers import condition, events_of, wait_status


def _issued(plane: ControlPlane, kapi: KubeApi, namespace: str, name: str) -> dict[str, Any]:
    plane.kubectl("apply", "-n", namespace, "-f", "-", input=rotating_secret(
        name, generator={"random": {"length": 24}}))
    wait_status(kapi, namespace, name, lambda s: s.get("currentVersion") == 1 and
                condition(s, "Degraded").get("status") == "False", what="version 1")
    secret = kapi.get_secret(namespace, name)
    remember_secret(secret)
    assert secret is not None
    return secret


def _drift_seen_then_recovered(kapi: KubeApi, namespace: str, name: str,
                               started: float) -> tuple[dict[str, Any], float]:
    """Poll the status every 100 ms: Degraded SecretDrift must show, then clear."""
    seen: list[dict[str, Any]] = []

    def recovered() -> dict[str, Any] | None:
        status = (kapi.get_rotating_secret(namespace, name) or {}).get("status") or {}
        degraded = condition(status, "Degraded")
        if degraded.get("reason") == "SecretDrift" and degraded.get("status") == "True":
            seen.append(status)
        return status if seen and degraded.get("status") == "False" else None

    wait_for(recovered, timeout=30, interval=0.1, what="SecretDrift, then recovery")
    return seen[0], time.monotonic() - started


def _working(kapi: KubeApi, namespace: str, name: str, version: int) -> dict[str, Any]:
    secret = kapi.get_secret(namespace, name)
    assert secret is not None
    remember_secret(secret)
    slots, _ = decode(secret, verified=True)  # values match their keyed fingerprints
    assert slots.current is not None and slots.current.version == version
    assert len(slots.current.material[""]) >= 24
    assert json.loads(base64.b64decode(secret["data"]["versions.json"])) == {"current": version}
    return secret


def _one_drift_warning(kapi: KubeApi, namespace: str, name: str) -> str:
    drift = [e for e in events_of(kapi, namespace, name) if e["reason"] == "SecretDrift"]
    assert len(drift) == 1, drift
    assert drift[0]["type"] == "Warning"
    return str(drift[0]["message"])


def test_deleted_secret_comes_back_with_a_new_version(
        control_plane: ControlPlane, kapi: KubeApi, namespace: str,
        operator: OperatorProcess) -> None:
    _issued(control_plane, kapi, namespace, "gone")
    started = time.monotonic()
    control_plane.kubectl("delete", "secret", "gone", "-n", namespace)
    drifted, took = _drift_seen_then_recovered(kapi, namespace, "gone", started)
    print(f"deleted Secret noticed and repaired, Degraded cleared after {took:.1f}s")
    assert "Secret" in condition(drifted, "Degraded")["message"]
    assert "was deleted" in condition(drifted, "Degraded")["message"]
    status = wait_status(kapi, namespace, "gone", lambda s: s.get("currentVersion") == 2)
    assert status["latestVersion"] == 2 and status["phase"] == "Idle"
    _working(kapi, namespace, "gone", 2)
    message = _one_drift_warning(kapi, namespace, "gone")
    assert "was deleted" in message and "issued version 2 as current" in message
    assert took < 20


def test_value_edited_by_hand_is_replaced(
        control_plane: ControlPlane, kapi: KubeApi, namespace: str,
        operator: OperatorProcess) -> None:
    before = _issued(control_plane, kapi, namespace, "edited")
    started = time.monotonic()
    hand = base64.b64encode(b"typed-in-by-someone-else").decode()
    control_plane.kubectl("patch", "secret", "edited", "-n", namespace, "--type", "merge",
                          "-p", json.dumps({"data": {"current": hand}}))
    _, took = _drift_seen_then_recovered(kapi, namespace, "edited", started)
    print(f"edited value noticed and replaced, Degraded cleared after {took:.1f}s")
    wait_status(kapi, namespace, "edited", lambda s: s.get("currentVersion") == 2)
    secret = _working(kapi, namespace, "edited", 2)
    assert secret["data"]["current"] not in (hand, before["data"]["current"])
    message = _one_drift_warning(kapi, namespace, "edited")
    assert "the value of slot current (version 1) was edited" in message
    assert "typed-in" not in message  # never the value itself
