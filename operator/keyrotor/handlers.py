"""kopf handlers: thin glue between kopf's watching and :class:`keyrotor.reconciler.Reconciler`.

* A daemon per RotatingSecret runs the reconcile loop: reconcile, then sleep for the delay the
  engine asked for, or less when woken.
* A raw event handler wakes the daemon when the spec (generation) or the manual trigger
  annotation changes, so edits and ``keyrotor rotate`` act at once. It keeps no state in the
  object (no ``last-handled-configuration`` for it).
* A deletion handler applies ``deletionPolicy`` to the Secret (no garbage collector needed).

No handler is ever attached to Secrets: kopf would copy their data into annotations.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf

from keyrotor import metrics
from keyrotor.kube import GROUP, PLURAL, VERSION, KubeApi, load_client
from keyrotor.reconciler import TRIGGER_ANNOTATION, Reconciler
from keyrotor.restarts import DEFAULT_WINDOW, Restarter

log = logging.getLogger("keyrotor")


@dataclass
class Shared:
    """Per-operator state, handed to kopf as ``memo.shared`` (never module globals): the API
    client, the rollout restarter every reconciler shares, and the wake-up events."""

    api: KubeApi
    restarter: Restarter
    phase_pause: float = 0.0  # slow motion for demos and crash tests
    namespaces: tuple[str, ...] = ()  # watched namespaces; empty: cluster-wide
    wakeups: dict[str, asyncio.Event] = field(default_factory=dict)
    last_seen: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    @classmethod
    def create(cls, *, phase_pause: float = 0.0, namespaces: Sequence[str] = (),
               restart_window: float = DEFAULT_WINDOW) -> Shared:
        api = KubeApi(load_client())
        return cls(api=api, restarter=Restarter(api, window=restart_window),
                   phase_pause=phase_pause, namespaces=tuple(namespaces))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    shared: Shared = memo.shared
    # Watching named namespaces needs no list of namespaces nor of CRDs: without scanning,
    # kopf asks for neither, so a namespaced install needs no cluster-wide permission at all.
    settings.scanning.disabled = bool(shared.namespaces) and not any(
        c in n for n in shared.namespaces for c in "*?[!")
    settings.persistence.finalizer = "keyrotor.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="keyrotor.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="keyrotor.io", key="last-handled-configuration")
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60


async def _sleep(delay: float, *waitables: Any) -> None:
    """Sleep up to ``delay`` or until one of ``waitables`` finishes; cancels every waiter it
    made, so no task outlives the sleep."""
    waiters = [asyncio.ensure_future(w) for w in waitables]
    try:
        await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0, initial_delay=0)
async def rotation_loop(namespace: str | None, name: str, uid: str,
                        stopped: kopf.DaemonStopped, memo: kopf.Memo, **_: Any) -> None:
    assert namespace is not None, "RotatingSecret is namespaced"
    shared: Shared = memo.shared
    reconciler = Reconciler(api=shared.api, phase_pause=shared.phase_pause,
                            restarter=shared.restarter)
    wake = shared.wakeups.setdefault(uid, asyncio.Event())
    try:
        while not stopped:
            wake.clear()
            delay = await reconciler.reconcile(namespace, name)
            if delay <= 0:
                continue
            if reconciler.phase_pause and delay <= reconciler.phase_pause:
                # In slow motion a change of spec or trigger must not cut the pause short.
                await _sleep(delay, stopped.wait())
            else:
                await _sleep(delay, wake.wait(), stopped.wait())
    finally:
        shared.wakeups.pop(uid, None)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def wake_on_change(body: kopf.Body, uid: str, memo: kopf.Memo, **_: Any) -> None:
    """Wake the loop when the spec or the manual trigger changed (not on status writes).
    Async, so it runs on the event loop: ``asyncio.Event.set`` is not thread-safe."""
    shared: Shared = memo.shared
    seen = (body.metadata.get("generation"),
            (body.metadata.annotations or {}).get(TRIGGER_ANNOTATION))
    if shared.last_seen.get(uid) != seen:
        shared.last_seen[uid] = seen
        if uid in shared.wakeups:
            shared.wakeups[uid].set()


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def apply_deletion_policy(spec: kopf.Spec, namespace: str | None, name: str, uid: str,
                                memo: kopf.Memo, **_: Any) -> None:
    assert namespace is not None, "RotatingSecret is namespaced"
    shared: Shared = memo.shared
    secret_name = spec.get("secretName")
    shared.last_seen.pop(uid, None)
    metrics.forget(namespace, name)
    if not secret_name:
        return
    api = shared.api
    secret = await asyncio.to_thread(api.get_secret, namespace, secret_name)
    refs = ((secret or {}).get("metadata") or {}).get("ownerReferences") or []
    if secret is None or not any(r.get("uid") == uid for r in refs):
        return  # not ours: never touch it
    if spec.get("deletionPolicy", "Retain") == "Delete":
        await asyncio.to_thread(api.delete_secret, namespace, secret_name,
                                uid=secret["metadata"]["uid"])
        log.info("%s/%s: deleted Secret %s (deletionPolicy Delete)", namespace, name,
                 secret_name)
    else:
        # Retain: keep the Secret and its current key, drop keyrotor's ownership so a
        # garbage collector does not remove it with the RotatingSecret.
        kept = [r for r in refs if r.get("uid") != uid]
        await asyncio.to_thread(api.patch_secret, namespace, secret_name, [
            {"op": "replace", "path": "/metadata/ownerReferences", "value": kept}])
        log.info("%s/%s: kept Secret %s (deletionPolicy Retain)", namespace, name,
                 secret_name)
