"""Rollout restarts of the workloads in ``spec.rolloutRestartTargets``, debounced.

After a promotion, presenters must pick up the new ``current``; a workload that reads its
Secret only at start needs a restart. keyrotor restarts it the way ``kubectl rollout restart``
does, by changing a pod-template annotation, one annotation per RotatingSecret::

    restarted.keyrotor.io/<RotatingSecret name>: "<version>"

Several RotatingSecrets that touch one workload within the debounce window are merged into
one patch, hence one rollout rather than several. The check is also the retry: each
verification round looks at the workload, requests the restart again if the annotation does
not carry the version yet (after an operator restart, say), and otherwise reads the rollout's
progress from the workload's status, as ``kubectl rollout status`` does. The old version is
revoked only after every target rolled out.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from keyrotor.engine.model import ConsumerResult
from keyrotor.engine.model import restart_name as result_name

log = logging.getLogger("keyrotor.restarts")
ANNOTATION_PREFIX = "restarted.keyrotor.io/"
DEFAULT_WINDOW = 10.0


class WorkloadApi(Protocol):
    def get_workload(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None: ...
    def annotate_pod_template(self, namespace: str, kind: str, name: str,
                              annotations: dict[str, str]) -> None: ...


def annotation_key(rotating_secret: str) -> str:
    # The name part of an annotation key holds at most 63 characters.
    if len(rotating_secret) > 63:
        digest = hashlib.sha256(rotating_secret.encode()).hexdigest()[:10]
        rotating_secret = f"{rotating_secret[:52]}-{digest}"
    return ANNOTATION_PREFIX + rotating_secret


def rollout_progress(kind: str, body: dict[str, Any]) -> tuple[bool, str]:
    """(rolled out?, what ``kubectl rollout status`` would say), from the status alone."""
    meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    if int(status.get("observedGeneration", 0)) < int(meta.get("generation", 0)):
        return False, "waiting for the controller to observe the new pod template"
    if kind == "DaemonSet":
        desired = int(status.get("desiredNumberScheduled", 0))
        updated = int(status.get("updatedNumberScheduled", 0))
        available = int(status.get("numberAvailable", 0))
    else:
        desired = int(spec.get("replicas", 1))
        updated = int(status.get("updatedReplicas", 0))
        available = int(status.get("availableReplicas", status.get("readyReplicas", 0)))
        if kind == "Deployment" and int(status.get("replicas", 0)) > updated:
            return False, (f"{int(status.get('replicas', 0)) - updated} old replicas are "
                           "pending termination")
    if updated < desired:
        return False, f"{updated} of {desired} updated replicas"
    if available < desired:
        return False, f"{available} of {desired} updated replicas are available"
    return True, f"rolled out ({updated} of {desired} updated)"


@dataclass
class Restarter:
    """One per operator process: collects restart requests and flushes each workload once
    per window."""

    api: WorkloadApi
    window: float = DEFAULT_WINDOW
    _pending: dict[tuple[str, str, str], dict[str, str]] = field(default_factory=dict)
    _flushing: dict[tuple[str, str, str], asyncio.Task[None]] = field(default_factory=dict)

    async def check(self, namespace: str, target: dict[str, Any], rotating_secret: str,
                    version: int) -> ConsumerResult:
        kind, name = target["kind"], target["name"]
        shown = result_name(target)
        body = await asyncio.to_thread(self.api.get_workload, namespace, kind, name)
        if body is None:
            return ConsumerResult(shown, False, f"{kind} {namespace}/{name} not found")
        template = ((body.get("spec") or {}).get("template") or {}).get("metadata") or {}
        key = annotation_key(rotating_secret)
        if (template.get("annotations") or {}).get(key) != str(version):
            self.request(namespace, kind, name, {key: str(version)})
            return ConsumerResult(shown, False, f"rollout restart requested (debounced for "
                                                f"up to {self.window:g}s)", pending=True)
        done, message = rollout_progress(kind, body)
        return ConsumerResult(shown, done, message, pending=not done)

    def request(self, namespace: str, kind: str, name: str, annotations: dict[str, str]) -> None:
        workload = (namespace, kind, name)
        self._pending.setdefault(workload, {}).update(annotations)
        if workload not in self._flushing:
            self._flushing[workload] = asyncio.create_task(self._flush_later(workload))

    async def _flush_later(self, workload: tuple[str, str, str]) -> None:
        try:
            await asyncio.sleep(self.window)
            annotations = self._pending.pop(workload, {})
            namespace, kind, name = workload
            if annotations:
                await asyncio.to_thread(self.api.annotate_pod_template, namespace, kind, name,
                                        annotations)
                log.info("%s/%s: rollout restart of %s for %s", namespace, name, kind,
                         ", ".join(sorted(k.removeprefix(ANNOTATION_PREFIX)
                                          for k in annotations)))
        except Exception:
            # The next verification round sees the annotation missing and asks again.
            log.exception("rollout restart of %s failed", "/".join(workload))
        finally:
            self._flushing.pop(workload, None)
