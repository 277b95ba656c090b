"""The Kubernetes API as keyrotor uses it: a few calls on plain dicts, nothing more.

The calls go through :mod:`keyrotor.kubehttp` (urllib3, JSON in and out): the operator process
never imports the official ``kubernetes`` package, whose import alone weighed more than
keyrotor's state at a thousand objects. The client is synchronous; callers on the event loop
run these in worker threads. Answers are plain dicts, exactly what ``kubectl get -o json``
shows.

``KubeApi(...)`` also takes an official ``kubernetes.client.ApiClient`` (tests and tools hold
one): its connection settings are copied. ``.core``, ``.custom`` and ``.apps`` are there for
them as the official API objects, imported on first use; in the operator only ``.core``'s two
metadata-only Secret list calls (:mod:`keyrotor.secretwatch`) are used, and those run here.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import time
from typing import Any, ClassVar

import urllib3

from keyrotor import kubehttp
from keyrotor.errors import ApiUnavailable, Conflict, PermissionDenied
from keyrotor.kubehttp import ApiError

__all__ = ["ApiError", "Conflict", "KubeApi", "PermissionDenied", "load_client"]

GROUP, VERSION, PLURAL = "keyrotor.io", "v1alpha1", "rotatingsecrets"
COMPONENT = "keyrotor"
# Every call has a deadline (connect, read): with etcd frozen the API server accepts
# connections and never answers, and a call without one would hang its worker for good.
TIMEOUT = (3.0, 5.0)
JSON = "application/json"
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
CUSTOM = f"/apis/{GROUP}/{VERSION}"


def load_client(kubeconfig: str | None = None, context: str | None = None, *,
                pool_size: int | None = None) -> kubehttp.Client:
    """In-cluster credentials when running in a pod, else the kubeconfig. ``pool_size``: keep
    that many connections open (one per reconcile worker) instead of urllib3's four."""
    return kubehttp.Client(kubehttp.load(kubeconfig, context), pool_size=pool_size or 4)


def from_official(api_client: Any) -> kubehttp.Client:
    """A :class:`kubehttp.Client` with the settings of an official ``ApiClient``."""
    config = api_client.configuration
    token = (config.api_key or {}).get("authorization") or (config.api_key or {}).get(
        "BearerToken")
    if token and token.lower().startswith("bearer "):
        token = token[7:]
    return kubehttp.Client(kubehttp.Credentials(
        server=config.host, ca_file=config.ssl_ca_cert, cert_file=config.cert_file,
        key_file=config.key_file, token=token or None, insecure=not config.verify_ssl,
        tls_server_name=getattr(config, "tls_server_name", None)),
        pool_size=config.connection_pool_maxsize or 4)


def _unavailable(verb: str, resource: str, exc: BaseException) -> ApiUnavailable:
    return ApiUnavailable(f"the API server did not answer {verb} {resource}: "
                          f"{type(exc).__name__}")


def _mapped(exc: ApiError, verb: str, resource: str, namespace: str | None) -> Exception:
    """keyrotor's error for an answer outside 2xx: 429/5xx → :class:`ApiUnavailable` (with
    Retry-After), 403 → :class:`PermissionDenied` naming the verb and resource (so the
    RotatingSecret's status can say which permission is missing), 409 → :class:`Conflict`;
    anything else stays an :class:`ApiError`."""
    if exc.status == 429 or exc.status >= 500:
        retry_after = exc.headers.get("Retry-After")
        return ApiUnavailable(
            f"the API server answered {exc.status} to {verb} {resource}",
            retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None)
    if exc.status == 403:
        return PermissionDenied(verb=verb, resource=resource, namespace=namespace)
    if exc.status == 409:
        return Conflict(exc.reason)
    return exc


class _OfficialApi:
    """``KubeApi.core``/``.custom``/``.apps``: the official API object of that name, built on
    first use (tests and tools); ``CoreV1Api``'s two metadata-only Secret list calls are
    answered here without it (the operator's Secret watch)."""

    def __init__(self, kube: KubeApi, name: str) -> None:
        self._kube, self._name = kube, name
        self._api: Any = None

    def __getattr__(self, attr: str) -> Any:
        if self._api is None:
            from kubernetes import client

            self._api = getattr(client, self._name)(self._kube.official())
        return getattr(self._api, attr)

    def list_namespaced_secret(self, namespace: str, **kwargs: Any) -> Any:
        return self._list_secrets(f"/api/v1/namespaces/{namespace}/secrets", **kwargs)

    def list_secret_for_all_namespaces(self, **kwargs: Any) -> Any:
        return self._list_secrets("/api/v1/secrets", **kwargs)

    def _list_secrets(self, path: str, *, _headers: dict[str, str] | None = None,
                      _preload_content: bool = True, _request_timeout: Any = None,
                      label_selector: str | None = None, watch: bool | None = None,
                      resource_version: str | None = None, timeout_seconds: int | None = None,
                      allow_watch_bookmarks: bool | None = None, limit: int | None = None,
                      _continue: str | None = None) -> Any:
        """The official signature's subset keyrotor uses; the urllib3 response (``.data``,
        ``.stream()``, ``.release_conn()``, ``.shutdown()``)."""
        params = {"labelSelector": label_selector, "watch": watch,
                  "resourceVersion": resource_version, "timeoutSeconds": timeout_seconds,
                  "allowWatchBookmarks": allow_watch_bookmarks, "limit": limit,
                  "continue": _continue}
        if isinstance(_request_timeout, int | float):
            _request_timeout = (_request_timeout, _request_timeout)
        return self._kube.http.request(
            "GET", path, params=params, accept=(_headers or {}).get("Accept", JSON),
            timeout=_request_timeout or TIMEOUT, stream=not _preload_content)


class KubeApi:
    """The calls keyrotor makes, on dicts. Raises :class:`Conflict` on HTTP 409."""

    def __init__(self, api: kubehttp.Client | Any) -> None:
        if isinstance(api, kubehttp.Client):
            self.http, self._official = api, None
        else:  # an official ApiClient (tests, tools): the same server and credentials
            self.http, self._official = from_official(api), api
        self.core: Any = _OfficialApi(self, "CoreV1Api")
        self.custom: Any = _OfficialApi(self, "CustomObjectsApi")
        self.apps: Any = _OfficialApi(self, "AppsV1Api")

    def official(self) -> Any:
        """An official ``ApiClient`` on the same server (imports ``kubernetes``: not for the
        operator process)."""
        if self._official is None:
            from kubernetes import client

            creds = self.http.credentials
            config = client.Configuration()
            config.host = creds.server
            config.ssl_ca_cert = creds.ca_file
            config.cert_file, config.key_file = creds.cert_file, creds.key_file
            config.verify_ssl = not creds.insecure
            if creds.token:
                config.api_key = {"authorization": f"Bearer {creds.token}"}
            self._official = client.ApiClient(config)
        return self._official

    def _send(self, method: str, path: str, *, verb: str, resource: str,
              namespace: str | None, body: Any = None, params: dict[str, Any] | None = None,
              content_type: str = JSON, missing: bool = False) -> Any:
        """One call; the answer decoded, or None on 404 when ``missing``. Errors mapped."""
        try:
            response = self.http.request(method, path, params=params, body=body,
                                         content_type=content_type, timeout=TIMEOUT)
        except urllib3.exceptions.HTTPError as exc:
            raise _unavailable(verb, resource, exc) from None
        except ApiError as exc:
            if missing and exc.status == 404:
                return None
            raise _mapped(exc, verb, resource, namespace) from None
        return json.loads(response.data) if response.data else {}

    # ---- any resource ------------------------------------------------------------------------

    def request(self, method: str, path: str, *, body: Any = None,
                params: dict[str, str] | None = None, verb: str | None = None,
                resource: str = "", namespace: str | None = None,
                content_type: str = "application/json") -> dict[str, Any] | None:
        """One call on a path such as ``/api/v1/namespaces/NS/configmaps/NAME``: the answer
        as a dict, or None on 404. Errors map like every other call (409 → Conflict, 403 →
        PermissionDenied naming ``verb`` and ``resource``, 429/5xx → ApiUnavailable). For
        PATCH pass ``content_type`` (``application/merge-patch+json`` etc.)."""
        answer: dict[str, Any] | None = self._send(
            method, path, verb=verb or method.lower(), resource=resource or path,
            namespace=namespace, body=body, params=params, content_type=content_type,
            missing=True)
        return answer

    # ---- RotatingSecrets -------------------------------------------------------------------

    @staticmethod
    def _rs(namespace: str, name: str = "") -> str:
        return f"{CUSTOM}/namespaces/{namespace}/{PLURAL}" + (f"/{name}" if name else "")

    def get_rotating_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        answer: dict[str, Any] | None = self._send(
            "GET", self._rs(namespace, name), verb="get", resource=f"{PLURAL}.{GROUP}",
            namespace=namespace, missing=True)
        return answer

    def list_rotating_secrets(self, namespace: str | None = None) -> list[dict[str, Any]]:
        path = self._rs(namespace) if namespace else f"{CUSTOM}/{PLURAL}"
        items: list[dict[str, Any]] = self._send(
            "GET", path, verb="list", resource=f"{PLURAL}.{GROUP}", namespace=namespace)["items"]
        return items

    def patch_status(self, namespace: str, name: str, status: dict[str, Any], *,
                     resource_version: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"status": status}
        if resource_version:
            # A resourceVersion in a merge patch is a precondition: stale writers get 409.
            body["metadata"] = {"resourceVersion": resource_version}
        answer: dict[str, Any] = self._send(
            "PATCH", self._rs(namespace, name) + "/status", verb="patch",
            resource=f"{PLURAL}.{GROUP}/status", namespace=namespace, body=body,
            content_type=MERGE)
        return answer

    def remove_finalizer(self, namespace: str, name: str, finalizer: str) -> None:
        obj = self.get_rotating_secret(namespace, name)
        finalizers = ((obj or {}).get("metadata") or {}).get("finalizers") or []
        if finalizer not in finalizers:
            return
        index = finalizers.index(finalizer)
        self._send("PATCH", self._rs(namespace, name), verb="patch",
                   resource=f"{PLURAL}.{GROUP}", namespace=namespace, content_type=JSON_PATCH,
                   body=[{"op": "test", "path": f"/metadata/finalizers/{index}",
                          "value": finalizer},
                         {"op": "remove", "path": f"/metadata/finalizers/{index}"}])

    def annotate_rotating_secret(self, namespace: str, name: str, key: str, value: str) -> None:
        self._send("PATCH", self._rs(namespace, name), verb="patch",
                   resource=f"{PLURAL}.{GROUP}", namespace=namespace, content_type=MERGE,
                   body={"metadata": {"annotations": {key: value}}})

    # ---- Secrets -----------------------------------------------------------------------------

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        answer: dict[str, Any] | None = self._send(
            "GET", f"/api/v1/namespaces/{namespace}/secrets/{name}", verb="get",
            resource="secrets", namespace=namespace, missing=True)
        return answer

    def write_secret(self, body: dict[str, Any], *, create: bool) -> str | None:
        """Create or replace; the new resourceVersion (so keyrotor knows its own writes when
        the Secret watch reports them). The answer's data is never kept."""
        meta = body["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/secrets"
        answer = self._send("POST" if create else "PUT",
                            path if create else f"{path}/{meta['name']}",
                            verb="create" if create else "update", resource="secrets",
                            namespace=meta["namespace"], body=body)
        version = (answer.get("metadata") or {}).get("resourceVersion")
        return str(version) if version else None

    def delete_secret(self, namespace: str, name: str, *, uid: str | None = None) -> None:
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if uid:
            options["preconditions"] = {"uid": uid}
        with contextlib.suppress(Conflict):  # the uid precondition failed: not ours, leave it
            self._send("DELETE", f"/api/v1/namespaces/{namespace}/secrets/{name}",
                       verb="delete", resource="secrets", namespace=namespace, body=options,
                       missing=True)

    def patch_secret(self, namespace: str, name: str,
                     patch: dict[str, Any] | list[dict[str, Any]]) -> None:
        """A strategic merge patch (a dict) or a JSON patch (a list of operations)."""
        self._send("PATCH", f"/api/v1/namespaces/{namespace}/secrets/{name}", verb="patch",
                   resource="secrets", namespace=namespace, body=patch,
                   content_type=JSON_PATCH if isinstance(patch, list) else STRATEGIC)

    # ---- workloads (rollout restarts) -------------------------------------------------------

    _WORKLOADS: ClassVar[dict[str, str]] = {
        "Deployment": "deployments", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets"}

    def get_workload(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        plural = self._WORKLOADS[kind]
        answer: dict[str, Any] | None = self._send(
            "GET", f"/apis/apps/v1/namespaces/{namespace}/{plural}/{name}", verb="get",
            resource=f"{kind.lower()}s.apps", namespace=namespace, missing=True)
        return answer

    def annotate_pod_template(self, namespace: str, kind: str, name: str,
                              annotations: dict[str, str]) -> None:
        """One merge patch of the pod template's annotations: one new rollout."""
        plural = self._WORKLOADS[kind]
        self._send("PATCH", f"/apis/apps/v1/namespaces/{namespace}/{plural}/{name}",
                   verb="patch", resource=f"{kind.lower()}s.apps", namespace=namespace,
                   content_type=STRATEGIC,
                   body={"spec": {"template": {"metadata": {"annotations": annotations}}}})

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
            self._send("POST", f"/api/v1/namespaces/{meta['namespace']}/events",
                       verb="create", resource="events", namespace=meta["namespace"],
                       body=event)
        except Conflict:
            if name is None:
                raise  # AlreadyExists on a unique name: not a replay, report it

    def list_events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self._send(
            "GET", f"/api/v1/namespaces/{namespace}/events", verb="list", resource="events",
            namespace=namespace, params={"fieldSelector": f"involvedObject.name={name}"}
        )["items"]
        return items
