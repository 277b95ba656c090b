"""A full rotation whose versions live on a real SoftHSM2 token, driven by the operator."""

from __future__ import annotations

import base64

import pkcs11
from pkcs11 import Attribute

from keyrotor.kube import KubeApi
from keyrotor.testing.controlplane import ControlPlane
from keyrotor.testing.softhsm import SoftHsmToken
from tests.operator.conftest import OperatorProcess, rotating_secret
from tests.operator.helpers import condition, wait_status


def labels_on_token(token: SoftHsmToken) -> set[str]:
    lib = pkcs11.lib(token.module)
    with lib.get_token(token_label=token.label).open(user_pin=token.pin) as session:
        return {o[Attribute.LABEL] for o in session.get_objects()
                if o[Attribute.LABEL].startswith("op-")}


def test_hsm_rotation_destroys_the_old_key_on_the_token(
    softhsm: SoftHsmToken, control_plane: ControlPlane, kapi: KubeApi, namespace: str,
    operator: OperatorProcess,
) -> None:
    prefix = f"op-{namespace}"
    control_plane.kubectl("create", "secret", "generic", "hsm-pin", "-n", namespace,
                          f"--from-literal=pin={softhsm.pin}")
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=rotating_secret(
        "signing", rotation={"minOverlap": "1s"},
        generator={"hsm": {"module": softhsm.module, "tokenLabel": softhsm.label,
                           "pinSecretRef": {"name": "hsm-pin"}, "key": "EC-P256",
                           "labelPrefix": prefix}}))
    wait_status(kapi, namespace, "signing", lambda s: s.get("currentVersion") == 1)
    assert labels_on_token(softhsm) == {f"{prefix}-v1"}
    kapi.annotate_rotating_secret(namespace, "signing", "keyrotor.io/rotate", "hsm")
    status = wait_status(kapi, namespace, "signing", lambda s: s.get("rotationCount") == 1)
    assert status["currentVersion"] == 2
    assert condition(status, "Degraded")["status"] == "False"
    assert labels_on_token(softhsm) == {f"{prefix}-v2"}  # v1's objects were destroyed
    secret = kapi.get_secret(namespace, "signing")
    assert secret is not None
    uri = base64.b64decode(secret["data"]["current"]).decode()
    assert uri == f"pkcs11:token={softhsm.label};object={prefix}-v2;id=keyrotor-2"
    assert base64.b64decode(secret["data"]["current.pub"]).startswith(b"-----BEGIN PUBLIC KEY")
    assert (operator.metric("keyrotor_backend_requests_total", backend="hsm",
                            operation="destroy") or 0) >= 1


def test_hsm_credentials_gone_mid_rotation_then_back(
    softhsm: SoftHsmToken, control_plane: ControlPlane, kapi: KubeApi, namespace: str,
    operator: OperatorProcess,
) -> None:
    """The PIN disappears right after a version number is allocated: nothing is generated,
    nothing revoked, Degraded says why; the rotation completes once the PIN is back."""
    prefix = f"op-{namespace}-out"
    operator.slow_motion(1.0)
    pin = ("create", "secret", "generic", "hsm-pin", "-n", namespace,
           f"--from-literal=pin={softhsm.pin}")
    control_plane.kubectl(*pin)
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=rotating_secret(
        "aes", rotation={"minOverlap": "1s"},
        generator={"hsm": {"module": softhsm.module, "tokenLabel": softhsm.label,
                           "pinSecretRef": {"name": "hsm-pin"}, "labelPrefix": prefix}}))
    wait_status(kapi, namespace, "aes", lambda s: s.get("currentVersion") == 1)
    kapi.annotate_rotating_secret(namespace, "aes", "keyrotor.io/rotate", "gone")
    wait_status(kapi, namespace, "aes", lambda s: s.get("phase") == "Generating")
    control_plane.kubectl("delete", "secret", "hsm-pin", "-n", namespace)
    status = wait_status(kapi, namespace, "aes",
                         lambda s: condition(s, "Degraded").get("status") == "True")
    assert "hsm-pin" in condition(status, "Degraded")["message"]
    assert status["phase"] == "Generating" and status["currentVersion"] == 1
    assert labels_on_token(softhsm) & {f"{prefix}-v1", f"{prefix}-v2"} == {f"{prefix}-v1"}
    control_plane.kubectl(*pin)
    status = wait_status(kapi, namespace, "aes", lambda s: s.get("rotationCount") == 1,
                         timeout=60)
    assert status["currentVersion"] == 2 and status["latestVersion"] == 2
    assert condition(status, "Degraded")["status"] == "False"
    labels = labels_on_token(softhsm)
    assert f"{prefix}-v2" in labels and f"{prefix}-v1" not in labels
