"""The control plane under the tests is a real Kubernetes API server, not a stand-in.

Each test exercises one behaviour an operator depends on and that a mock would have to imitate:
schema validation at admission, watches, the status subresource, optimistic concurrency,
finalizers and RBAC.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from keyrotor.testing.controlplane import ControlPlane
from keyrotor.testing.waiting import wait_for
from tests.conftest import api_client

GROUP, VERSION, PLURAL = "envtest.keyrotor.io", "v1", "widgets"

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "widget", "kind": "Widget"},
        "versions": [{
            "name": VERSION,
            "served": True,
            "storage": True,
            "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {
                        "type": "object",
                        "required": ["size"],
                        "properties": {
                            "size": {"type": "integer", "minimum": 1, "maximum": 10},
                            "colour": {"type": "string", "enum": ["red", "blue"]},
                        },
                    },
                    "status": {
                        "type": "object",
                        "properties": {"phase": {"type": "string"}},
                    },
                },
            }},
        }],
    },
}


@pytest.fixture(scope="module")
def widget_crd(kube: client.ApiClient) -> Iterator[None]:
    ext = client.ApiextensionsV1Api(kube)
    ext.create_custom_resource_definition(WIDGET_CRD)

    def established() -> bool:
        crd = ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
        conditions = (crd.status and crd.status.conditions) or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_for(established, what="CRD Established")
    yield
    ext.delete_custom_resource_definition(f"{PLURAL}.{GROUP}")


def widget(name: str, size: object = 3) -> dict[str, object]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget",
            "metadata": {"name": name}, "spec": {"size": size}}


def test_control_plane_reports_its_version(control_plane: ControlPlane) -> None:
    out = control_plane.kubectl("version", "-o", "yaml").stdout
    server = yaml.safe_load(out)["serverVersion"]
    assert server["gitVersion"].startswith("v1.34."), server
    assert control_plane.ready_seconds < 60


def test_crd_becomes_established_and_served(control_plane: ControlPlane, widget_crd: None) -> None:
    out = control_plane.kubectl("api-resources", "--api-group", GROUP, "-o", "name").stdout
    assert f"{PLURAL}.{GROUP}" in out.split()


def test_kubectl_apply_validates_against_the_schema(
    control_plane: ControlPlane, widget_crd: None, namespace: str
) -> None:
    ok = control_plane.kubectl("apply", "-n", namespace, "-f", "-",
                               input=yaml.safe_dump(widget("good", 5)))
    assert "widget.envtest.keyrotor.io/good created" in ok.stdout

    bad = control_plane.kubectl("apply", "-n", namespace, "-f", "-", check=False,
                                input=yaml.safe_dump(widget("bad", 42)))
    assert bad.returncode != 0
    assert "spec.size" in bad.stderr
    assert "should be less than or equal to 10" in bad.stderr

    missing = control_plane.kubectl(
        "apply", "-n", namespace, "-f", "-", check=False,
        input=yaml.safe_dump({**widget("empty"), "spec": {"colour": "green"}}),
    )
    assert missing.returncode != 0
    assert "spec.size: Required value" in missing.stderr
    assert 'spec.colour: Unsupported value: "green"' in missing.stderr


def test_watch_sees_changes(kube: client.ApiClient, widget_crd: None, namespace: str) -> None:
    api = client.CustomObjectsApi(kube)
    seen: list[tuple[str, int]] = []
    # Watch from a known resourceVersion: every change after it is delivered, however late
    # the watch connection is made.
    since = api.list_namespaced_custom_object(GROUP, VERSION, namespace,
                                              PLURAL)["metadata"]["resourceVersion"]

    def watcher() -> None:
        w = watch.Watch()
        for event in w.stream(api.list_namespaced_custom_object, GROUP, VERSION, namespace,
                              PLURAL, resource_version=since, timeout_seconds=20):
            seen.append((event["type"], event["object"]["spec"]["size"]))
            if event["type"] == "MODIFIED":
                w.stop()

    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("w1", 1))
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "w1",
                                       {"spec": {"size": 2}})
    thread.join(25)
    assert ("ADDED", 1) in seen
    assert ("MODIFIED", 2) in seen


def test_status_subresource(kube: client.ApiClient, widget_crd: None, namespace: str) -> None:
    api = client.CustomObjectsApi(kube)
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("s1"))
    # Status written through the main resource is dropped ...
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "s1",
                                       {"status": {"phase": "ignored"}})
    obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "s1")
    assert "status" not in obj or obj["status"].get("phase") != "ignored"
    # ... and kept through the status subresource, without bumping the generation.
    generation = obj["metadata"]["generation"]
    api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "s1",
                                              {"status": {"phase": "Ready"}})
    obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "s1")
    assert obj["status"]["phase"] == "Ready"
    assert obj["metadata"]["generation"] == generation


def test_stale_update_conflicts(kube: client.ApiClient, widget_crd: None, namespace: str) -> None:
    api = client.CustomObjectsApi(kube)
    created = api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                  widget("c1"))
    stale = dict(created)
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "c1",
                                       {"spec": {"size": 4}})
    stale["spec"] = {"size": 5}
    with pytest.raises(ApiException) as caught:
        api.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "c1", stale)
    assert caught.value.status == 409
    current = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "c1")
    assert current["spec"]["size"] == 4


def test_finalizer_blocks_deletion(kube: client.ApiClient, widget_crd: None,
                                   namespace: str) -> None:
    api = client.CustomObjectsApi(kube)
    body = widget("f1")
    body["metadata"] = {"name": "f1", "finalizers": ["keyrotor.io/test"]}
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "f1")
    obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "f1")
    assert obj["metadata"]["deletionTimestamp"]
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "f1",
                                       {"metadata": {"finalizers": None}})

    def gone() -> bool:
        try:
            api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "f1")
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for(gone, what="widget deleted")


def test_plain_user_is_forbidden(control_plane: ControlPlane, namespace: str) -> None:
    with api_client(control_plane, user="nobody") as nobody, \
            pytest.raises(ApiException) as caught:
        client.CoreV1Api(nobody).list_namespaced_secret(namespace)
    assert caught.value.status == 403
    message = json.loads(caught.value.body)["message"]
    assert 'User "nobody" cannot list resource "secrets"' in message

    denied = control_plane.kubectl("auth", "can-i", "create", "secrets", "-n", namespace,
                                   user="nobody", check=False)
    assert denied.stdout.strip() == "no"
    allowed = control_plane.kubectl("auth", "can-i", "create", "secrets", "-n", namespace)
    assert allowed.stdout.strip() == "yes"
