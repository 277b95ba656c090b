"""The bad-input campaign against the real API server and a running operator.

Three hundred generated specs (tests/security/specs.py, a fixed hypothesis seed, no example
database: the same specs on every machine) are created through the real kube-apiserver. Each
is either rejected at admission with a message naming a field, or accepted; every accepted
one is reconciled by one running ``keyrotor run`` and ends Ready (a Secret holds version 1) or
Degraded with a reason and a Warning event (naming the field when the reason is InvalidSpec).
Throughout, the operator process stays alive; a canary RotatingSecret created first still
completes a manual rotation at the end. Nothing ends Degraded with reason InternalError (an
unexpected exception in the operator): that counts as a crash.

The counts are printed (``-s`` shows them) and recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from keyrotor.kube import KubeApi
from keyrotor.testing.controlplane import ControlPlane
from keyrotor.testing.toolchain import repo_root
from keyrotor.testing.waiting import wait_for
from tests.operator.conftest import OperatorProcess, crds, kapi, scanned_operator
from tests.operator.helpers import condition, wait_status

__all__ = ["crds", "kapi"]  # fixtures, imported for this module

SPECS = 300
GROUP, VERSION, PLURAL = "keyrotor.io", "v1alpha1", "rotatingsecrets"
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def campaign_specs(count: int) -> list[dict[str, Any]]:
    """``count`` specs, the same on every machine (see :func:`tests.security.specs.fixed`)."""
    out = subprocess.run([sys.executable, "-m", "tests.security.specs", str(count)],
                         capture_output=True, text=True, check=True, timeout=120,
                         cwd=repo_root(), env={**os.environ, "PYTHONHASHSEED": "0"})
    drawn: list[dict[str, Any]] = json.loads(out.stdout)
    return drawn


def unique_secret_name(spec: dict[str, Any], index: int) -> dict[str, Any]:
    """A valid secretName made unique (two objects owning one Secret is another test's
    subject); hostile ones stay as they are."""
    name = spec.get("secretName")
    if isinstance(name, str) and NAME.match(name) and len(name) < 200:
        return {**spec, "secretName": f"s{index:03d}-{name}"[:253]}
    return spec


REFS = ("authSecretRef", "tokenSecretRef", "pinSecretRef", "adminSecretRef")
REF_SECRETS = {  # what referenced Secrets hold: text, and bytes that are not UTF-8
    "ref-text": {k: base64.b64encode(b"s3cr3t-" + k.encode()).decode()
                 for k in ("token", "pin", "username", "password")},
    "ref-binary": {k: base64.b64encode(b"\xff\xfe\x00" + k.encode()).decode()
                   for k in ("token", "pin", "username", "password")},
}


def existing_refs(value: Any, index: int) -> Any:
    """``value`` with each Secret reference that names a valid Secret pointed at one of the
    Secrets made for the campaign, so the operator goes on to read it (missing ones are
    covered by the hostile names that stay)."""
    if isinstance(value, list):
        return [existing_refs(v, index) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        if key in REFS and isinstance(item, dict) and isinstance(item.get("name"), str) \
                and NAME.match(item["name"]) and index % 4 != 0:
            item = {**item, "name": "ref-binary" if index % 4 == 3 else "ref-text"}
        out[key] = existing_refs(item, index)
    return out


@pytest.fixture
def operator(control_plane: ControlPlane, crds: None, namespace: str,
             tmp_path: Path) -> Iterator[OperatorProcess]:
    with scanned_operator(control_plane, namespace, tmp_path) as proc:
        yield proc


def settled(obj: dict[str, Any], warnings: dict[str, list[dict[str, Any]]]) -> str | None:
    """'ready', 'degraded:<reason>' once the object shows either (and, when Degraded, its
    Warning event has arrived), else None."""
    status = obj.get("status") or {}
    degraded = condition(status, "Degraded")
    name = obj["metadata"]["name"]
    if degraded.get("status") == "True":
        reason = degraded.get("reason", "")
        if any(e.get("reason") == reason for e in warnings.get(name, ())):
            return f"degraded:{reason}"
        return None
    if condition(status, "Ready").get("status") == "True":
        return "ready"
    return None


def test_generated_specs_through_admission_and_a_running_operator(
    control_plane: ControlPlane, kube: client.ApiClient, kapi: KubeApi, namespace: str,
    operator: OperatorProcess,
) -> None:
    started = time.monotonic()
    api = client.CustomObjectsApi(kube)

    def create(name: str, spec: Any) -> None:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "RotatingSecret",
            "metadata": {"name": name}, "spec": spec})

    for name, data in REF_SECRETS.items():
        client.CoreV1Api(kube).create_namespaced_secret(namespace, client.V1Secret(
            metadata=client.V1ObjectMeta(name=name), data=data))
    create("canary", {"secretName": "canary", "generator": {"random": {"length": 32}},
                      "rotation": {"minOverlap": "1s"}})
    wait_status(kapi, namespace, "canary", lambda s: s.get("currentVersion") == 1,
                what="the canary's first version")

    counts: collections.Counter[str] = collections.Counter()
    unnamed: list[str] = []  # admission messages that name no field
    accepted: list[str] = []
    for index, spec in enumerate(campaign_specs(SPECS)):
        name = f"bad-{index:03d}"
        counts["tried"] += 1
        try:
            create(name, existing_refs(unique_secret_name(spec, index), index))
        except ApiException as exc:
            assert exc.status in (400, 422), f"{name}: HTTP {exc.status}: {exc.body}"
            counts["rejected at admission"] += 1
            if "spec." not in str(exc.body):
                unnamed.append(f"{name}: {str(exc.body)[:300]}")
            continue
        accepted.append(name)

    outcomes: dict[str, str] = {}
    named: dict[str, str] = {}  # the field each InvalidSpec Warning names

    def all_settled() -> bool:
        warnings: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for event in kapi.request("GET", f"/api/v1/namespaces/{namespace}/events")["items"]:
            if event.get("type") == "Warning":
                warnings[event["involvedObject"]["name"]].append(event)
        for obj in kapi.list_rotating_secrets(namespace):
            name = obj["metadata"]["name"]
            if name in accepted and (found := settled(obj, warnings)) is not None:
                outcomes[name] = found
                if found == "degraded:InvalidSpec":
                    message = next(e["message"] for e in warnings[name]
                                   if e["reason"] == "InvalidSpec")
                    assert message.startswith(("spec.", "spec:")), f"{name}: {message}"
                    named[name] = re.sub(r"\[[^]]*\]", "[]", message.split(":", 1)[0])
        assert operator.proc is not None and operator.proc.poll() is None, \
            "the operator process died"
        return len(outcomes) == len(accepted)

    try:
        wait_for(all_settled, timeout=90, interval=0.5, what="every accepted spec handled")
    finally:
        for outcome in outcomes.values():
            counts["handled (Ready)" if outcome == "ready" else "handled (Degraded)"] += 1
        counts["crashes"] = sum(1 for o in outcomes.values() if o == "degraded:InternalError")
        counts["unsettled"] = len(accepted) - len(outcomes)
        reasons = collections.Counter(o.split(":", 1)[1] for o in outcomes.values()
                                      if o != "ready")
        print(f"\nbad-input campaign: {dict(counts)}; Degraded by reason: {dict(reasons)}; "
              f"{time.monotonic() - started:.1f} s; InvalidSpec named "
              f"{dict(collections.Counter(named.values()))}")

    # The canary still rotates on demand: the operator keeps reconciling everything else.
    kapi.annotate_rotating_secret(namespace, "canary", "keyrotor.io/rotate", "after-campaign")
    status = wait_status(kapi, namespace, "canary", lambda s: s.get("rotationCount") == 1,
                         timeout=60, what="the canary's manual rotation")
    assert status["currentVersion"] == 2
    assert operator.proc is not None and operator.proc.poll() is None
    assert operator.fetch(f"http://127.0.0.1:{operator.liveness_port}/healthz")

    crashed = {n: condition((kapi.get_rotating_secret(namespace, n) or {}).get("status") or {},
                            "Degraded").get("message") for n, o in outcomes.items()
               if o == "degraded:InternalError"}
    assert counts["crashes"] == 0, f"unexpected errors (the operator log has them): {crashed}"
    assert not unnamed, "admission messages that name no field:\n" + "\n".join(unnamed)
    assert counts["rejected at admission"] + len(accepted) == SPECS
    assert counts["rejected at admission"] > 0 and counts["handled (Ready)"] > 0 and \
        counts["handled (Degraded)"] > 0
