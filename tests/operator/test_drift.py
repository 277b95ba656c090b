"""A Secret deleted or edited by hand, against the real control plane: the operator's
metadata-only Secret watch notices within seconds, the Secret comes back with a working current
version (a new number: random material cannot be recovered; the same one where Vault holds it),
the status shows Degraded SecretDrift and then recovers, and one Warning event says what was
found and done."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

from kubernetes import client

from keyrotor.kube import KubeApi
from keyrotor.publishing.secret import decode
from keyrotor.secretwatch import SecretCache, SecretWatch, _request
from keyrotor.testing.controlplane import ControlPlane
from keyrotor.testing.vaultserver import VaultServer
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


def test_the_watch_receives_metadata_only(kube: client.ApiClient, namespace: str) -> None:
    """The API server honours the watch's Accept header: lists and watch events carry
    PartialObjectMetadata, never a Secret's data; unlabelled Secrets are not sent at all.
    Then SecretWatch itself feeds a cache and stops at once."""
    core = client.CoreV1Api(kube)
    labels = {"app.kubernetes.io/managed-by": "keyrotor", "keyrotor.io/rotatingsecret": "k"}
    core.create_namespaced_secret(namespace, {"metadata": {"name": "ours", "labels": labels},
                                              "data": {"current": "c2VjcmV0"}})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "theirs"},
                                              "data": {"current": "c2VjcmV0"}})
    listed = json.loads(_request(core, namespace, limit=10).data)
    assert listed["kind"] == "PartialObjectMetadataList"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["ours"]
    assert all(set(i) <= {"kind", "apiVersion", "metadata"} for i in listed["items"])
    response = _request(core, namespace, watch=True, timeout_seconds=1,
                        resource_version=listed["metadata"]["resourceVersion"])
    core.patch_namespaced_secret("ours", namespace, {"data": {"next": "bmV4dA=="}})
    raw = response.read()
    assert b"c2VjcmV0" not in raw and b"bmV4dA" not in raw
    events = [json.loads(line) for line in raw.splitlines() if line.strip()]
    assert [(e["type"], e["object"]["kind"]) for e in events] == [
        ("MODIFIED", "PartialObjectMetadata")]

    woken: list[tuple[str, str]] = []

    async def watch_and_delete() -> None:
        cache = SecretCache(wake=woken.append)
        watch = SecretWatch(cache, core, (namespace,))
        watch.start(asyncio.get_running_loop())
        try:
            await asyncio.to_thread(wait_for, lambda: namespace in cache.synced, timeout=10,
                                    what="the first list")
            assert set(cache.views) == {(namespace, "ours")}
            core.delete_namespaced_secret("ours", namespace)
            await asyncio.to_thread(wait_for, lambda: woken, timeout=10, what="a wake-up")
            assert woken == [(namespace, "k")]
        finally:
            watch.stop()
        started = time.monotonic()
        await asyncio.to_thread(wait_for, lambda: not any(t.is_alive() for t in watch._threads),
                                timeout=10, what="the watch thread to end")
        assert time.monotonic() - started < 5

    asyncio.run(watch_and_delete())


def test_deleted_secret_is_republished_from_vault(
        control_plane: ControlPlane, kapi: KubeApi, namespace: str, vault: VaultServer,
        operator: OperatorProcess) -> None:
    """Where the backend still holds the version (Vault KV), the same version comes back with
    the same value: no new version, one Warning saying it was re-published."""
    path = f"drift/{namespace}"
    control_plane.kubectl("create", "secret", "generic", "vault-token", "-n", namespace,
                          f"--from-literal=token={vault.root_token}")
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=rotating_secret(
        "kv-drift", generator={"vault": {"address": vault.address, "kv": {"path": path},
                                         "auth": {"tokenSecretRef": {"name": "vault-token"}}}}))
    wait_status(kapi, namespace, "kv-drift", lambda s: s.get("currentVersion") == 1 and
                condition(s, "Degraded").get("status") == "False", what="version 1")
    before = kapi.get_secret(namespace, "kv-drift")
    remember_secret(before)
    assert before is not None
    started = time.monotonic()
    control_plane.kubectl("delete", "secret", "kv-drift", "-n", namespace)
    drifted, took = _drift_seen_then_recovered(kapi, namespace, "kv-drift", started)
    print(f"deleted Secret re-published from Vault, Degraded cleared after {took:.1f}s")
    status = (kapi.get_rotating_secret(namespace, "kv-drift") or {})["status"]
    assert status["currentVersion"] == status["latestVersion"] == 1
    after = kapi.get_secret(namespace, "kv-drift")
    assert after is not None
    assert after["data"]["current"] == before["data"]["current"]
    got = vault.client().secrets.kv.v2.read_secret_version(path, version=1,
                                                           raise_on_deleted_version=True)
    assert base64.b64decode(after["data"]["current"]).decode() == got["data"]["data"]["value"]
    message = _one_drift_warning(kapi, namespace, "kv-drift")
    assert "was deleted" in message and "re-published versions (current 1)" in message
    assert "re-published" in condition(drifted, "Degraded")["message"]
