"""The webhook target against the reference key service in two-key mode (GitHub-style): the
service holds old and new keys during the overlap and only the current one afterwards; a bad
management token is reported as Degraded with the status code and where the contract is."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from keyrotor.kube import KubeApi
from keyrotor.testing.controlplane import ControlPlane
from keyrotor.testing.processes import stop
from keyrotor.testing.waiting import wait_for
from tests.operator.conftest import OperatorProcess, remember_secret, rotating_secret
from tests.operator.helpers import condition, start_key_service, wait_status


@pytest.fixture
def key_service(tmp_path: Path) -> Iterator[tuple[str, str]]:
    proc, url, token = start_key_service(tmp_path, "two")
    yield url, token
    stop(proc)


def versions(url: str) -> list[int]:
    held: list[int] = requests.get(f"{url}/keys", timeout=5).json()["versions"]
    return held


def test_two_key_service_holds_both_only_during_the_overlap(
        control_plane: ControlPlane, kapi: KubeApi, namespace: str, operator: OperatorProcess,
        key_service: tuple[str, str]) -> None:
    url, token = key_service
    kapi.core.create_namespaced_secret(namespace, {
        "metadata": {"name": "svc-admin"},
        "data": {"token": base64.b64encode(b"wrong-" + token.encode()).decode()}})
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=rotating_secret(
        "svc-key", generator={"random": {"length": 32}},
        rotation={"minOverlap": "2s", "maxOverlap": "2m"},
        verification={"interval": "300ms", "successesRequired": 2},
        target={"webhook": {"url": url, "authSecretRef": {"name": "svc-admin"}}},
        consumers=[{"name": "service", "target": {}}]))
    status = wait_status(kapi, namespace, "svc-key",
                         lambda s: condition(s, "Degraded").get("status") == "True",
                         what="Degraded for a bad token")
    message = condition(status, "Degraded")["message"]
    assert "HTTP 401" in message and "docs/webhook-target.md" in message, message
    assert versions(url) == []

    control_plane.kubectl("patch", "secret", "svc-admin", "-n", namespace, "--type=merge",
                          "-p", json.dumps({"stringData": {"token": token}}))
    wait_status(kapi, namespace, "svc-key", lambda s: s.get("currentVersion") == 1,
                timeout=120, what="version 1 once the token is right")
    assert versions(url) == [1]
    seen: set[tuple[int, ...]] = set()
    for rotation in (1, 2):
        kapi.annotate_rotating_secret(namespace, "svc-key", "keyrotor.io/rotate", str(rotation))

        def done(r: int = rotation) -> bool:
            seen.add(tuple(versions(url)))
            status = kapi.get_rotating_secret(namespace, "svc-key") or {}
            s = status.get("status") or {}
            return s.get("rotationCount") == r and s.get("phase") == "Idle"

        wait_for(done, timeout=60, interval=0.05, what=f"rotation {rotation}")
    assert (1, 2) in seen and (2, 3) in seen, seen  # both keys valid during each overlap
    assert versions(url) == [3]
    secret = kapi.get_secret(namespace, "svc-key")
    remember_secret(secret)
    assert secret is not None
    current = base64.b64decode(secret["data"]["current"]).decode()
    api = requests.get(f"{url}/api", headers={"Authorization": f"Bearer {current}"}, timeout=5)
    assert api.status_code == 200
