"""keyrotor's own API client (keyrotor.kubehttp under keyrotor.kube.KubeApi) against the real
API server: credentials from a kubeconfig and from a pod's ServiceAccount (token re-read), and
the same error mapping the official client had (404 → None, 409 → Conflict, 403 →
PermissionDenied naming verb and resource, no answer → ApiUnavailable, 429 → Retry-After)."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest
import yaml

from keyrotor import kube, kubehttp
from keyrotor.errors import ApiUnavailable, Conflict, PermissionDenied
from keyrotor.kube import KubeApi, load_client
from keyrotor.testing.controlplane import ControlPlane, free_port


def secret(name: str, namespace: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace}, "data": {"k": "dg=="}}


def test_calls_and_errors_on_the_real_server(control_plane: ControlPlane,
                                             namespace: str) -> None:
    api = KubeApi(load_client(str(control_plane.kubeconfig), "admin"))
    assert api.get_secret(namespace, "absent") is None
    version = api.write_secret(secret("s", namespace), create=True)
    assert version and version.isdigit()
    with pytest.raises(Conflict):
        api.write_secret(secret("s", namespace), create=True)
    api.patch_secret(namespace, "s", {"metadata": {"labels": {"a": "b"}}})  # strategic merge
    api.patch_secret(namespace, "s", [{"op": "add", "path": "/data/j", "value": "dw=="}])
    got = api.get_secret(namespace, "s") or {}
    assert got["metadata"]["labels"] == {"a": "b"} and set(got["data"]) == {"k", "j"}
    api.delete_secret(namespace, "s", uid="not-its-uid")  # precondition fails: kept
    assert api.get_secret(namespace, "s") is not None
    api.delete_secret(namespace, "s", uid=got["metadata"]["uid"])
    api.delete_secret(namespace, "s")  # already gone: nothing to do
    assert api.get_secret(namespace, "s") is None
    assert api.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/none") is None
    listed = api.request("GET", f"/api/v1/namespaces/{namespace}/configmaps",
                         params={"limit": "1"})
    assert listed is not None and listed["kind"] == "ConfigMapList"

    nobody = KubeApi(load_client(str(control_plane.kubeconfig), "nobody"))
    with pytest.raises(PermissionDenied) as denied:
        nobody.write_secret(secret("t", namespace), create=True)
    assert "may not create secrets" in str(denied.value) and namespace in str(denied.value)

    # The official client's ApiClient is accepted too (tests and tools hold one).
    from tests.conftest import api_client

    with api_client(control_plane) as official:
        assert KubeApi(official).get_secret(namespace, "absent") is None

    away = kubehttp.Client(kubehttp.Credentials(server=f"https://127.0.0.1:{free_port()}",
                                                insecure=True))
    with pytest.raises(ApiUnavailable, match="did not answer get secrets"):
        KubeApi(away).get_secret(namespace, "s")


def test_429_and_5xx_become_api_unavailable_with_retry_after() -> None:
    busy = kube._mapped(kubehttp.ApiError(429, "Too Many Requests", {"Retry-After": "7"}),
                        "get", "secrets", "ns")
    assert isinstance(busy, ApiUnavailable) and busy.retry_after == 7.0
    assert isinstance(kube._mapped(kubehttp.ApiError(503, "x"), "get", "secrets", "ns"),
                      ApiUnavailable)
    invalid = kubehttp.ApiError(422, "Unprocessable Entity", body=b'{"message": "bad"}')
    assert kube._mapped(invalid, "create", "secrets", "ns") is invalid
    assert "bad" in str(invalid)


def test_kubeconfig_forms(control_plane: ControlPlane, tmp_path: Path) -> None:
    """Inline certificate data, files relative to the kubeconfig, a token file, two files
    merged (the first wins); an exec plugin is refused with a reason."""
    ca = control_plane.ca_file.read_bytes()
    token = tmp_path / "sub" / "token"
    token.parent.mkdir()
    token.write_text(control_plane.admin_token + "\n")
    first = {"apiVersion": "v1", "kind": "Config", "current-context": "tf",
             "clusters": [{"name": "c", "cluster": {
                 "server": control_plane.url,
                 "certificate-authority-data": base64.b64encode(ca).decode()}}],
             "users": [{"name": "tf", "user": {"tokenFile": "sub/token"}},
                       {"name": "ex", "user": {"exec": {"command": "x"}}}],
             "contexts": [{"name": "tf", "context": {"cluster": "c", "user": "tf",
                                                     "namespace": "n1"}},
                          {"name": "ex", "context": {"cluster": "c", "user": "ex"}}]}
    second = {"current-context": "other", "contexts": [
        {"name": "tf", "context": {"cluster": "ignored", "user": "ignored"}}]}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(first))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(second))
    both = f"{tmp_path / 'a.yaml'}:{tmp_path / 'b.yaml'}"
    creds = kubehttp.from_kubeconfig(both)
    assert creds.token_file == str(tmp_path / "sub" / "token") and creds.namespace == "n1"
    assert KubeApi(kubehttp.Client(creds)).request("GET", "/api/v1/namespaces/default")
    with pytest.raises(kubehttp.ConfigError, match="exec or auth-provider"):
        kubehttp.from_kubeconfig(both, "ex")
    with pytest.raises(kubehttp.ConfigError, match="not found"):
        kubehttp.from_kubeconfig(str(tmp_path / "a.yaml"), "absent")


def test_in_cluster_service_account_token_is_reread(
        control_plane: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a pod: host and port from the environment, token and CA from the ServiceAccount
    folder; the token file is read again after TOKEN_REFRESH (the kubelet rotates it)."""
    folder = tmp_path / "sa"
    folder.mkdir()
    (folder / "token").write_text(control_plane.admin_token)
    (folder / "ca.crt").write_bytes(control_plane.ca_file.read_bytes())
    (folder / "namespace").write_text("keyrotor-system\n")
    monkeypatch.setattr(kubehttp, "SA_DIR", folder)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(control_plane.api_port))
    creds = kubehttp.load("/nonexistent/kubeconfig")  # in-cluster wins, as before
    assert creds.namespace == "keyrotor-system"
    http = kubehttp.Client(creds)
    assert http.json("GET", "/api/v1/namespaces/default")["metadata"]["name"] == "default"
    (folder / "token").write_text(f"rotated-{uuid.uuid4().hex}")
    assert http.json("GET", "/api/v1/namespaces/default")  # cached for a minute
    monkeypatch.setattr(kubehttp, "TOKEN_REFRESH", 0.0)
    with pytest.raises(kubehttp.ApiError) as caught:
        http.json("GET", "/api/v1/namespaces/default")
    assert caught.value.status == 401
