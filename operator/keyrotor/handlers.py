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
from typing import Any

import kopf

from keyrotor import metrics
from keyrotor.kube import GROUP, PLURAL, VERSION, KubeApi, load_client
from keyrotor.reconciler import TRIGGER_ANNOTATION, Reconciler
from keyrotor.restarts import DEFAULT_WINDOW, Restarter

log = logging.getLogger("keyrotor")
PHASE_PAUSE = 0.0  # set by ``keyrotor run --phase-pause``
RESTART_WINDOW = DEFAULT_WINDOW  # set by ``keyrotor run --restart-debounce``
WAKEUPS: dict[str, asyncio.Event] = {}
LAST_SEEN: dict[str, tuple[Any, Any]] = {}
_api: KubeApi | None = None
_restarter: Restarter | None = None


def api() -> KubeApi:
    global _api
    if _api is None:
        _api = KubeApi(load_client())
    return _api


def restarter() -> Restarter:
    global _restarter
    if _restarter is None:
        _restarter = Restarter(api(), window=RESTART_WINDOW)
    return _restarter


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = "keyrotor.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="keyrotor.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="keyrotor.io", key="last-handled-configuration")
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0, initial_delay=0)
async def rotation_loop(namespace: str | None, name: str, uid: str,
                        stopped: kopf.DaemonStopped, **_: Any) -> None:
    assert namespace is not None, "RotatingSecret is namespaced"
    reconciler = Reconciler(api=api(), phase_pause=PHASE_PAUSE, restarter=restarter())
    wake = WAKEUPS.setdefault(uid, asyncio.Event())
    while not stopped:
        wake.clear()
        try:
            delay = await reconciler.reconcile(namespace, name)
        except Exception:
            log.exception("%s/%s: reconcile failed; retrying", namespace, name)
            metrics.RECONCILE_ERRORS.labels(namespace, name, "Exception").inc()
            delay = 10.0
        if delay <= 0:
            continue
        if reconciler.phase_pause and delay <= reconciler.phase_pause:
            # In slow motion a change of spec or trigger must not cut the pause short.
            await asyncio.wait([asyncio.ensure_future(stopped.wait())], timeout=delay)
            continue
        sleeper = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait([sleeper, asyncio.ensure_future(stopped.wait())],
                               timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
    WAKEUPS.pop(uid, None)


@kopf.on.event(GROUP, VERSION, PLURAL)
def wake_on_change(body: kopf.Body, uid: str, **_: Any) -> None:
    """Wake the loop when the spec or the manual trigger changed (not on status writes)."""
    seen = (body.metadata.get("generation"),
            (body.metadata.annotations or {}).get(TRIGGER_ANNOTATION))
    if LAST_SEEN.get(uid) != seen:
        LAST_SEEN[uid] = seen
        if uid in WAKEUPS:
            WAKEUPS[uid].set()


@kopf.on.delete(GROUP, VERSION, PLURAL)
def apply_deletion_policy(spec: kopf.Spec, namespace: str | None, name: str, uid: str,
                          **_: Any) -> None:
    assert namespace is not None, "RotatingSecret is namespaced"
    secret_name = spec.get("secretName")
    LAST_SEEN.pop(uid, None)
    metrics.forget(namespace, name)
    if not secret_name:
        return
    secret = api().get_secret(namespace, secret_name)
    refs = ((secret or {}).get("metadata") or {}).get("ownerReferences") or []
    if secret is None or not any(r.get("uid") == uid for r in refs):
        return  # not ours: never touch it
    if spec.get("deletionPolicy", "Retain") == "Delete":
        api().delete_secret(namespace, secret_name, uid=secret["metadata"]["uid"])
        log.info("%s/%s: deleted Secret %s (deletionPolicy Delete)", namespace, name,
                 secret_name)
    else:
        # Retain: keep the Secret and its current key, drop keyrotor's ownership so a
        # garbage collector does not remove it with the RotatingSecret.
        kept = [r for r in refs if r.get("uid") != uid]
        api().patch_secret(namespace, secret_name, [
            {"op": "replace", "path": "/metadata/ownerReferences", "value": kept}])
        log.info("%s/%s: kept Secret %s (deletionPolicy Retain)", namespace, name,
                 secret_name)
