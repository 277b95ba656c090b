"""Rotations whose versions live in a real Vault server, driven by the operator on the real
control plane: KV v2 through Vault's Kubernetes auth, Transit, and a Vault outage mid-rotation.
"""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest

from keyrotor.kube import KubeApi
from keyrotor.testing.controlplane import ControlPlane
from keyrotor.testing.toolchain import repo_root
from keyrotor.testing.vaultserver import VaultServer
from keyrotor.testing.waiting import wait_for
from tests.operator.conftest import OperatorProcess, remember_secret, rotating_secret
from tests.operator.helpers import condition, events_of, wait_status

POLICY = """
path "secret/data/*" { capabilities = ["create", "read", "update"] }
path "secret/metadata/*" { capabilities = ["read"] }
path "secret/destroy/*" { capabilities = ["update"] }
path "secret/delete/*" { capabilities = ["update"] }
"""


@pytest.fixture(scope="module")
def kubernetes_auth(control_plane: ControlPlane, crds: None, vault: VaultServer,
                    tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Vault trusts the control plane's ServiceAccount tokens; returns the operator's token."""
    control_plane.kubectl("apply", "--server-side", "-f",
                          str(repo_root() / "deploy" / "keyrotor.yaml"))
    control_plane.kubectl("create", "serviceaccount", "vault-reviewer", "-n", "keyrotor-system")
    control_plane.kubectl("create", "clusterrolebinding", "vault-reviewer",
                          "--clusterrole=system:auth-delegator",
                          "--serviceaccount=keyrotor-system:vault-reviewer")
    reviewer = control_plane.kubectl("create", "token", "vault-reviewer", "-n",
                                     "keyrotor-system", "--duration=2h").stdout.strip()
    client = vault.client()
    client.sys.enable_auth_method("kubernetes")
    client.auth.kubernetes.configure(kubernetes_host=control_plane.url,
                                     kubernetes_ca_cert=control_plane.ca_file.read_text(),
                                     token_reviewer_jwt=reviewer)
    client.sys.create_or_update_policy("keyrotor", POLICY)
    client.auth.kubernetes.create_role("keyrotor", bound_service_account_names=["keyrotor"],
                                       bound_service_account_namespaces=["keyrotor-system"],
                                       policies=["keyrotor"], ttl="1h")
    token = control_plane.kubectl("create", "token", "keyrotor", "-n", "keyrotor-system",
                                  "--duration=2h").stdout.strip()
    path = tmp_path_factory.mktemp("sa") / "token"
    path.write_text(token)
    return path


def kv_value(vault: VaultServer, path: str, version: int) -> str:
    got = vault.client().secrets.kv.v2.read_secret_version(path, version=version,
                                                           raise_on_deleted_version=True)
    return str(got["data"]["data"]["value"])


def test_kv_rotation_with_kubernetes_auth(control_plane: ControlPlane, kapi: KubeApi,
                                          namespace: str, vault: VaultServer,
                                          kubernetes_auth: Path,
                                          operator: OperatorProcess) -> None:
    path = f"apps/{namespace}"
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=rotating_secret(
        "kv-key", rotation={"minOverlap": "1s"},
        generator={"vault": {"address": vault.address, "kv": {"path": path},
                             "auth": {"kubernetes": {"role": "keyrotor",
                                                     "tokenPath": str(kubernetes_auth)}}}}))
    wait_status(kapi, namespace, "kv-key", lambda s: s.get("currentVersion") == 1)
    secret = kapi.get_secret(namespace, "kv-key")
    remember_secret(secret)
    assert secret is not None
    assert base64.b64decode(secret["data"]["current"]).decode() == kv_value(vault, path, 1)

    kapi.annotate_rotating_secret(namespace, "kv-key", "keyrotor.io/rotate", "kv")
    status = wait_status(kapi, namespace, "kv-key", lambda s: s.get("rotationCount") == 1)
    assert status["currentVersion"] == 2
    secret = kapi.get_secret(namespace, "kv-key")
    remember_secret(secret)
    assert secret is not None
    assert base64.b64decode(secret["data"]["current"]).decode() == kv_value(vault, path, 2)
    versions = vault.client().secrets.kv.v2.read_secret_metadata(path)["data"]["versions"]
    assert versions["1"]["destroyed"] is True and versions["2"]["destroyed"] is False
    # The Vault token never reaches the logs (the SA token file neither).
    assert kubernetes_auth.read_text() not in operator.log_text()


def test_transit_rotation(control_plane: ControlPlane, kapi: KubeApi, namespace: str,
                          vault: VaultServer, operator: OperatorProcess) -> None:
    key = f"k-{namespace}"
    control_plane.kubectl("create", "secret", "generic", "vault-token", "-n", namespace,
                          f"--from-literal=token={vault.root_token}")
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=rotating_secret(
        "transit-key", rotation={"minOverlap": "1s"},
        verification={"interval": "200ms", "successesRequired": 2},
        consumers=[{"name": "roundtrip", "transit": {}}],
        generator={"vault": {"address": vault.address, "transit": {"key": key},
                             "auth": {"tokenSecretRef": {"name": "vault-token"}}}}))
    wait_status(kapi, namespace, "transit-key", lambda s: s.get("currentVersion") == 1)
    kapi.annotate_rotating_secret(namespace, "transit-key", "keyrotor.io/rotate", "t")
    status = wait_status(kapi, namespace, "transit-key", lambda s: s.get("rotationCount") == 1)
    # Verified by Vault itself: an encrypt/decrypt round trip with exactly version 2.
    assert status["consumers"] == [{"name": "roundtrip", "ok": True, "version": 2,
                                    "message": "round trip with version 2 ok",
                                    "consecutiveFailures": 0,
                                    "lastProbeTime": status["consumers"][0]["lastProbeTime"]}]
    info = vault.client().secrets.transit.read_key(key)["data"]
    assert info["latest_version"] == 2 and info["min_decryption_version"] == 2
    assert set(info["keys"]) == {"2"}
    secret = kapi.get_secret(namespace, "transit-key")
    assert secret is not None
    assert base64.b64decode(secret["data"]["current"]).decode() == f"transit/{key}"
    assert base64.b64decode(secret["data"]["current.key-version"]) == b"2"
    assert vault.root_token not in operator.log_text()


def test_vault_outage_mid_rotation(control_plane: ControlPlane, kapi: KubeApi, namespace: str,
                                   vault: VaultServer, operator: OperatorProcess) -> None:
    path = f"outage/{uuid.uuid4().hex[:8]}"
    operator.slow_motion(1.0)
    control_plane.kubectl("create", "secret", "generic", "vault-token", "-n", namespace,
                          f"--from-literal=token={vault.root_token}")
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=rotating_secret(
        "outage", rotation={"minOverlap": "1s"},
        generator={"vault": {"address": vault.address, "kv": {"path": path},
                             "auth": {"tokenSecretRef": {"name": "vault-token"}}}}))
    wait_status(kapi, namespace, "outage", lambda s: s.get("currentVersion") == 1)
    first = kv_value(vault, path, 1)
    kapi.annotate_rotating_secret(namespace, "outage", "keyrotor.io/rotate", "outage")
    wait_status(kapi, namespace, "outage", lambda s: s.get("phase") == "Generating")
    vault.stop()  # gone before version 2 exists anywhere
    try:
        status = wait_status(kapi, namespace, "outage",
                             lambda s: condition(s, "Degraded").get("status") == "True",
                             what="Degraded while Vault is down")
        assert condition(status, "Degraded")["reason"] == "BackendUnavailable"
        assert status["currentVersion"] == 1 and status["phase"] == "Generating"
        secret = kapi.get_secret(namespace, "outage")
        assert secret is not None
        assert base64.b64decode(secret["data"]["current"]).decode() == first
        assert "next" not in secret["data"]
        wait_for(lambda: (operator.metric("keyrotor_backend_errors_total", backend="vault",
                                          operation="kv.read_metadata") or 0) >= 1,
                 what="error metric")
    finally:
        vault.start()  # back, sealed, unsealed again with its data
    status = wait_status(kapi, namespace, "outage", lambda s: s.get("rotationCount") == 1,
                         timeout=90, what="rotation completed after Vault returned")
    assert status["currentVersion"] == 2 and status["latestVersion"] == 2
    assert condition(status, "Degraded")["status"] == "False"
    versions = vault.client().secrets.kv.v2.read_secret_metadata(path)["data"]["versions"]
    assert sorted(versions) == ["1", "2"] and versions["1"]["destroyed"] is True
    warnings = [e for e in events_of(kapi, namespace, "outage") if e["type"] == "Warning"]
    assert warnings and warnings[0]["reason"] == "BackendUnavailable"
