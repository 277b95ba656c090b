"""The Kubernetes API as keyrotor uses it: a few calls on plain dicts, nothing more.

The official client is synchronous; callers on the event loop run these in worker threads.
Responses are read as raw JSON (``_preload_content=False``) so the rest of keyrotor handles
plain dicts, exactly what ``kubectl get -o json`` shows.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from typing import Any, ClassVar

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from keyrotor.errors import ApiUnavailable, Conflict, PermissionDenied

__all__ = ["Conflict", "KubeApi", "PermissionDenied", "load_client"]

GROUP, VERSION, PLURAL = "keyrotor.io", "v1alpha1", "rotatingsecrets"
COMPONENT = "keyrotor"
# Every call has a deadline (connect, read): with etcd frozen the API server accepts
# connections and never answers, and a call without one would hang its worker for good.
TIMEOUT = (3.0, 5.0)
# Answers as raw JSON (plain dicts, as kubectl shows them), within the deadline.
RAW: dict[str, Any] = {"_preload_content": False, "_request_timeout": TIMEOUT}


def load_client(kubeconfig: str | None = None, context: str | None = None, *,
                pool_size: int | None = None) -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig. ``pool_size``: keep
    that many connections open (one per reconcile worker) instead of urllib3's four."""
    configuration = client.Configuration()
    if pool_size:
        configuration.connection_pool_maxsize = pool_size
    try:
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig or os.environ.get("KUBECONFIG"), context=context,
            client_configuration=configuration)
    configuration.retries = 1  # keyrotor's own backoff retries, with the reason on record
    return client.ApiClient(configuration)


class _Calls:
    """Translates the API server's answers into keyrotor's errors for one kind of call:
    404 → ``None`` where the caller asked for it, 409 → :class:`Conflict`, 403 →
    :class:`PermissionDenied` naming the verb and resource, so the RotatingSecret's status can
    say which permission is missing."""

    def __init__(self, verb: str, resource: str, namespace: str | None) -> None:
        self.verb, self.resource, self.namespace = verb, resource, namespace

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, urllib3.exceptions.HTTPError):
            raise ApiUnavailable(f"the API server did not answer {self.verb} {self.resource}: "
                                 f"{type(exc).__name__}") from None
        if isinstance(exc, ApiException) and (exc.status == 429 or (exc.status or 0) >= 500):
            retry_after = (exc.headers or {}).get("Retry-After")
            raise ApiUnavailable(
                f"the API server answered {exc.status} to {self.verb} {self.resource}",
                retry_after=float(retry_after) if retry_after and retry_after.isdigit()
                else None) from None
        if isinstance(exc, ApiException):
            if exc.status == 403:
                raise PermissionDenied(verb=self.verb, resource=self.resource,
                                       namespace=self.namespace) from None
            if exc.status == 409:
                raise Conflict(str(exc.reason)) from None


def _call(verb: str, resource: str, namespace: str | None) -> _Calls:
    return _Calls(verb, resource, namespace)


def _json(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.data)
    return data


class KubeApi:
    """The calls keyrotor makes, on dicts. Raises :class:`Conflict` on HTTP 409."""

    def __init__(self, api: client.ApiClient) -> None:
        self.client = api
        # Typed as Any: keyrotor passes plain dicts where the generated stubs expect models.
        self.core: Any = client.CoreV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        self.apps: Any = client.AppsV1Api(api)

    # ---- any resource ------------------------------------------------------------------------

    def request(self, method: str, path: str, *, body: Any = None,
                params: dict[str, str] | None = None, verb: str | None = None,
                resource: str = "", namespace: str | None = None,
                content_type: str = "application/json") -> dict[str, Any] | None:
        """One call on a path such as ``/api/v1/namespaces/NS/configmaps/NAME``: the answer
        as a dict, or None on 404. Errors map like every other call (409 → Conflict, 403 →
        PermissionDenied naming ``verb`` and ``resource``, 429/5xx → ApiUnavailable). For
        PATCH pass ``content_type`` (``application/merge-patch+json`` etc.)."""
        try:
            with _call(verb or method.lower(), resource or path, namespace):
                call = self.client.param_serialize(
                    method.upper(), path, query_params=list((params or {}).items()),
                    header_params={"Content-Type": content_type, "Accept": "application/json"},
                    body=body, auth_settings=["BearerToken"])
                response = self.client.call_api(*call, _request_timeout=TIMEOUT)
                response.read()  # type: ignore[no-untyped-call]
                if not 200 <= response.status < 300:
                    raise ApiException(http_resp=response)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return _json(response)

    # ---- RotatingSecrets -------------------------------------------------------------------

    def get_rotating_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            with _call("get", f"{PLURAL}.{GROUP}", namespace):
                return _json(self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, **RAW))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_rotating_secrets(self, namespace: str | None = None) -> list[dict[str, Any]]:
        if namespace:
            raw = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                            **RAW)
        else:
            raw = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL,
                                                         **RAW)
        items: list[dict[str, Any]] = _json(raw)["items"]
        return items

    def patch_status(self, namespace: str, name: str, status: dict[str, Any], *,
                     resource_version: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"status": status}
        if resource_version:
            # A resourceVersion in a merge patch is a precondition: stale writers get 409.
            body["metadata"] = {"resourceVersion": resource_version}
        with _call("patch", f"{PLURAL}.{GROUP}/status", namespace):
            return _json(self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, body, **RAW))

    def remove_finalizer(self, namespace: str, name: str, finalizer: str) -> None:
        obj = self.get_rotating_secret(namespace, name)
        finalizers = ((obj or {}).get("metadata") or {}).get("finalizers") or []
        if finalizer not in finalizers:
            return
        index = finalizers.index(finalizer)
        with _call("patch", f"{PLURAL}.{GROUP}", namespace):
            self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, [
                {"op": "test", "path": f"/metadata/finalizers/{index}", "value": finalizer},
                {"op": "remove", "path": f"/metadata/finalizers/{index}"}])

    def annotate_rotating_secret(self, namespace: str, name: str, key: str, value: str) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, {"metadata": {"annotations": {key: value}}})

    # ---- Secrets -----------------------------------------------------------------------------

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            with _call("get", "secrets", namespace):
                return _json(self.core.read_namespaced_secret(name, namespace,
                                                              **RAW))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def write_secret(self, body: dict[str, Any], *, create: bool) -> str | None:
        """Create or replace; the new resourceVersion (so keyrotor knows its own writes when
        the Secret watch reports them). The answer's data is never kept."""
        meta = body["metadata"]
        with _call("create" if create else "update", "secrets", meta["namespace"]):
            if create:
                raw = self.core.create_namespaced_secret(meta["namespace"], body,
                                                         **RAW)
            else:
                raw = self.core.replace_namespaced_secret(meta["name"], meta["namespace"], body,
                                                          **RAW)
        version = (_json(raw).get("metadata") or {}).get("resourceVersion")
        return str(version) if version else None

    def delete_secret(self, namespace: str, name: str, *, uid: str | None = None) -> None:
        options = client.V1DeleteOptions(
            preconditions=client.V1Preconditions(uid=uid) if uid else None)
        try:
            with _call("delete", "secrets", namespace):
                self.core.delete_namespaced_secret(name, namespace, body=options, **RAW)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def patch_secret(self, namespace: str, name: str,
                     patch: dict[str, Any] | list[dict[str, Any]]) -> None:
        """A strategic merge patch (a dict) or a JSON patch (a list of operations)."""
        with _call("patch", "secrets", namespace):
            self.core.patch_namespaced_secret(name, namespace, patch)

    # ---- workloads (rollout restarts) -------------------------------------------------------

    _WORKLOADS: ClassVar[dict[str, str]] = {
        "Deployment": "deployment", "StatefulSet": "stateful_set", "DaemonSet": "daemon_set"}

    def get_workload(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        read = getattr(self.apps, f"read_namespaced_{self._WORKLOADS[kind]}")
        try:
            with _call("get", f"{kind.lower()}s.apps", namespace):
                return _json(read(name, namespace, **RAW))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def annotate_pod_template(self, namespace: str, kind: str, name: str,
                              annotations: dict[str, str]) -> None:
        """One merge patch of the pod template's annotations: one new rollout."""
        patch = getattr(self.apps, f"patch_namespaced_{self._WORKLOADS[kind]}")
        with _call("patch", f"{kind.lower()}s.apps", namespace):
            patch(name, namespace,
                  {"spec": {"template": {"metadata": {"annotations": annotations}}}},
                  _request_timeout=TIMEOUT)

    # ---- Events ------------------------------------------------------------------------------

    def post_event(self, obj: dict[str, Any], *, type: str, reason: str, message: str,
                   name: str | None = None) -> None:
        """Post an Event. With ``name``, at most once: a replay after a crash finds it there
        (409) and stops. Without, named like client-go's (name.<unix nanos in hex>)."""
        meta = obj["metadata"]
        now = datetime.datetime.now(datetime.UTC)
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name or f"{meta['name']}.{time.time_ns():x}",
                         "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": obj.get("apiVersion", f"{GROUP}/{VERSION}"),
                               "kind": obj.get("kind", "RotatingSecret"),
                               "name": meta["name"], "namespace": meta["namespace"],
                               "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "type": type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": COMPONENT,
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "count": 1,
        }
        try:
            with _call("create", "events", meta["namespace"]):
                self.core.create_namespaced_event(meta["namespace"], event, **RAW)
        except Conflict:
            if name is None:
                raise  # AlreadyExists on a unique name: not a replay, report it

    def list_events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        raw = self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name}", **RAW)
        items: list[dict[str, Any]] = _json(raw)["items"]
        return items
