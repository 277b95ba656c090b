"""The suite-wide secret scan (tests/secretscan.py) finds what it must, and says no secret.

Each test plants a leak in its own namespace (an Event, an annotation, a log file), scans that
namespace, checks the report, then removes the leak so the scan at the plane's stop stays clean.
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pyotp
from kubernetes import client

from keyrotor.testing.controlplane import ControlPlane
from tests import secretscan


def _secret(core: client.CoreV1Api, namespace: str, name: str, data: dict[str, bytes]) -> None:
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name=name),
        data={k: base64.b64encode(v).decode() for k, v in data.items()}))


def _event(core: client.CoreV1Api, namespace: str, name: str, message: str) -> None:
    core.create_namespaced_event(namespace, client.CoreV1Event(
        metadata=client.V1ObjectMeta(name=name), message=message, reason="Test",
        type="Warning", involved_object=client.V1ObjectReference(
            kind="Secret", name="api-key", namespace=namespace)))


def test_a_leak_in_an_event_an_annotation_or_a_log_is_found_and_never_printed(
    control_plane: ControlPlane, kube: client.ApiClient, namespace: str, tmp_path: Path,
) -> None:
    core = client.CoreV1Api(kube)
    value = secrets.token_urlsafe(32)
    raw = secrets.token_bytes(32)
    _secret(core, namespace, "api-key", {"current": value.encode(), "next": raw,
                                         "current.username": b"not-a-secret-user"})
    assert not secretscan.scan(control_plane, namespaces={namespace}, files=False).hits

    _event(core, namespace, "leaky", f"rotation failed for key {value}")
    core.patch_namespaced_secret("api-key", namespace, {"metadata": {"annotations": {
        "debug/next": raw.hex()}}})
    log = tmp_path / "operator.log"
    log.write_text("INFO all good\nDEBUG headers={'Authorization': 'Bearer "
                   f"{base64.b64encode(raw).decode()}'}}\n")
    secretscan.FILES.roots.append(tmp_path)
    try:
        report = secretscan.scan(control_plane, namespaces={namespace})
    finally:
        secretscan.FILES.roots.remove(tmp_path)
    text = "\n".join(report.hits)
    assert f"Event {namespace}/leaky" in text or "Event" in text
    assert secretscan.fingerprint(value) in text
    assert f"Secret {namespace}/api-key metadata" in text
    assert str(log) in text
    assert secretscan.fingerprint(raw.decode(errors="replace")) in text
    assert len(report.hits) == 3, text
    # The report never carries the secret in any form.
    for form in (value, raw.hex(), base64.b64encode(raw).decode()):
        assert form not in text

    core.delete_namespaced_event("leaky", namespace)
    core.patch_namespaced_secret("api-key", namespace, {"metadata": {"annotations": {
        "debug/next": None}}})
    log.write_text("INFO all good\n")
    assert not secretscan.scan(control_plane, namespaces={namespace}, files=False).hits


def test_a_totp_seed_or_code_is_found(control_plane: ControlPlane, kube: client.ApiClient,
                                      namespace: str) -> None:
    core = client.CoreV1Api(kube)
    seed = pyotp.random_base32()
    _secret(core, namespace, secretscan.APPROVERS_SECRET, {"alice": seed.encode()})
    code = pyotp.TOTP(seed).now()
    _event(core, namespace, "code", f"approval by alice with {code} accepted")
    _event(core, namespace, "seed", f"enrolled {seed}")
    report = secretscan.scan(control_plane, namespaces={namespace}, files=False)
    assert report.seeds == 1 and report.codes >= 3
    text = "\n".join(report.hits)
    assert "a TOTP code of an enrolled approver" in text
    assert f"TOTP seed in Secret {secretscan.APPROVERS_SECRET}" in text
    assert seed not in text and code not in text
    core.delete_namespaced_event("code", namespace)
    core.delete_namespaced_event("seed", namespace)
    assert not secretscan.scan(control_plane, namespaces={namespace}, files=False).hits


def test_a_test_input_secret_applied_client_side_is_named_not_failed(
        control_plane: ControlPlane, namespace: str) -> None:
    """kubectl apply (client-side) copies a Secret's data into its own last-applied annotation:
    the test harness's doing, not keyrotor's; the summary names it."""
    token = secrets.token_urlsafe(24)
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: vault-token}\n"
        f"stringData: {{token: {token}}}\n"))
    assert not secretscan.scan(control_plane, namespaces={namespace}, files=False).hits
    assert f"Secret {namespace}/vault-token" in secretscan.MIRRORED
