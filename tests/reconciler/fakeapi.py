"""An in-memory stand-in for the :class:`keyrotor.reconciler.Api` protocol with the API server's
rules that matter to a reconcile: resourceVersions that move on every write, merge-patch
preconditions (409), replace preconditions on Secrets (409), event names that must be unique
(409), and 403 for a verb a test takes away. Every write is counted by verb and resource,
like kube-apiserver's ``apiserver_request_total``."""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from keyrotor.errors import Conflict, PermissionDenied

NS = "ns"


@dataclass
class FakeApi:
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    secrets: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    writes: Counter[str] = field(default_factory=Counter)
    denied: set[tuple[str, str]] = field(default_factory=set)  # (verb, resource)
    # Hooks a test sets to interfere: called before a write, may raise or edit state.
    before: dict[str, Callable[[], None]] = field(default_factory=dict)
    # Called with (type, metadata) on every change of a Secret, as the metadata-only watch
    # would report it (keyrotor.secretwatch.SecretCache.observe).
    watchers: list[Callable[[str, dict[str, Any]], None]] = field(default_factory=list)
    _rv: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # ---- what a test sets up ----------------------------------------------------------------

    def add(self, name: str, spec: dict[str, Any], **annotations: str) -> None:
        self.objects[name] = {
            "apiVersion": "keyrotor.io/v1alpha1", "kind": "RotatingSecret",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}-0123456789",
                         "generation": 1, "resourceVersion": self._next(),
                         "annotations": dict(annotations)},
            # A copy, as the API server stores one: a test that edits the object later must
            # not edit the spec table other tests start from.
            "spec": {"secretName": name, **copy.deepcopy(spec)}}

    def edit(self, name: str, **annotations: str) -> None:
        """Someone else writes the object (an annotation): its resourceVersion moves."""
        meta = self.objects[name]["metadata"]
        meta["annotations"].update(annotations)
        meta["resourceVersion"] = self._next()

    def delete_secret_by_hand(self, name: str) -> None:
        gone = self.secrets.pop(name)
        self._notify("DELETED", gone)

    def edit_secret_by_hand(self, name: str, **data: bytes) -> None:
        """Someone else writes keys of the Secret (``kubectl edit``)."""
        import base64

        secret = self.secrets[name]
        secret["data"].update({k: base64.b64encode(v).decode() for k, v in data.items()})
        secret["metadata"]["resourceVersion"] = self._next()
        self._notify("MODIFIED", secret)

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.objects[name].get("status") or {})

    def reasons(self) -> list[str]:
        return [e["reason"] for e in self.events.values()]

    # ---- the Api protocol -------------------------------------------------------------------

    def get_rotating_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get(name)
        return copy.deepcopy(obj) if obj else None

    def patch_status(self, namespace: str, name: str, status: dict[str, Any], *,
                     resource_version: str | None) -> dict[str, Any]:
        self._write("patch", "rotatingsecrets/status")
        obj = self.objects[name]
        if resource_version and resource_version != obj["metadata"]["resourceVersion"]:
            raise Conflict("stale resourceVersion")
        merged = dict(obj.get("status") or {})
        for key, value in status.items():  # JSON merge patch: None removes
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = copy.deepcopy(value)
        obj["status"] = merged
        obj["metadata"]["resourceVersion"] = self._next()
        return copy.deepcopy(obj)

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        secret = self.secrets.get(name)
        return copy.deepcopy(secret) if secret else None

    def write_secret(self, body: dict[str, Any], *, create: bool) -> str | None:
        name = body["metadata"]["name"]
        self._write("create" if create else "update", "secrets")
        stored = self.secrets.get(name)
        if create and stored is not None:
            raise Conflict("already exists")
        if not create:
            if stored is None:
                raise RuntimeError("404: update of a missing Secret")
            if body["metadata"].get("resourceVersion") != stored["metadata"]["resourceVersion"]:
                raise Conflict("stale resourceVersion")
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = self._next()
        self.secrets[name] = body
        self._notify("ADDED" if create else "MODIFIED", body)
        return str(body["metadata"]["resourceVersion"])

    def post_event(self, obj: dict[str, Any], *, type: str, reason: str, message: str,
                   name: str | None = None) -> None:
        self._write("create", "events")
        if name in self.events:
            return  # a replay: posted already (what KubeApi does with the 409)
        self.events[name or f"{obj['metadata']['name']}.{self._next()}"] = {
            "type": type, "reason": reason, "message": message}

    # ---- internals --------------------------------------------------------------------------

    def _write(self, verb: str, resource: str) -> None:
        if (verb, resource) in self.denied:
            raise PermissionDenied(verb=verb, resource=resource, namespace=NS)
        if hook := self.before.pop(f"{verb} {resource}", None):
            hook()
        self.writes[f"{verb} {resource}"] += 1

    def _notify(self, kind: str, secret: dict[str, Any]) -> None:
        meta = {k: copy.deepcopy(v) for k, v in secret["metadata"].items()}
        meta.setdefault("namespace", NS)
        for watcher in self.watchers:
            watcher(kind, meta)

    def _next(self) -> str:
        return str(next(self._rv))
