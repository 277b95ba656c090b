"""kopf handlers: kopf watches RotatingSecrets, keyrotor's scheduler decides when each is looked at.

* One raw event handler feeds :class:`keyrotor.scheduling.Scheduler`: a new object is
  reconciled at once; a change of spec (generation) or of the manual trigger annotation wakes
  it; status writes (ours) do not. The scheduler runs :class:`keyrotor.reconciler.Reconciler`
  on a bounded pool of workers and sleeps each object as long as its engine asked.
* Nothing is stored in the object by kopf: no daemon, no create/update handlers, so no
  ``last-handled-configuration`` annotation and no finalizer. ``deletionPolicy`` works without
  one: with ``Delete`` the Secret carries an ownerReference (the garbage collector removes it)
  and keyrotor deletes it as soon as it sees the RotatingSecret go; with ``Retain`` it carries
  none, so nothing can remove it by accident.

No handler is ever attached to Secrets: kopf would copy their data into annotations. keyrotor's
own metadata-only watch (:mod:`keyrotor.secretwatch`) wakes the RotatingSecret of a Secret that
was deleted or written by someone else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf

from keyrotor import metrics
from keyrotor.kube import GROUP, PLURAL, VERSION, KubeApi
from keyrotor.publishing.secret import Owner
from keyrotor.reconciler import REQUEST_ANNOTATION, TRIGGER_ANNOTATION, Reconciler
from keyrotor.restarts import DEFAULT_WINDOW, Restarter
from keyrotor.scheduling import Key, Scheduler
from keyrotor.secretwatch import SecretCache, SecretWatch

log = logging.getLogger("keyrotor")
OLD_FINALIZER = "keyrotor.io/finalizer"  # set by keyrotor before 0.2; removed on deletion
SHARD_LABEL = "keyrotor.io/shard"


@dataclass
class Shared:
    """Per-operator state, handed to kopf as ``memo.shared`` (never module globals)."""

    api: KubeApi
    restarter: Restarter
    phase_pause: float = 0.0  # slow motion for demos and crash tests
    namespaces: tuple[str, ...] = ()  # watched namespaces; empty: cluster-wide
    # Sharding, as Flux does it: a shard handles the objects labelled keyrotor.io/shard=<its
    # name>; the main instance (no shard) handles the rest, less the shards named elsewhere.
    shard: str | None = None
    other_shards: frozenset[str] = frozenset()
    workers: int = 16
    # Reconcilers of busy objects only (mid-rotation or backing off); idle ones cost nothing.
    busy: dict[Key, Reconciler] = field(default_factory=dict)
    # What the last event showed of each object (uid, generation, trigger), hashed: 8 bytes.
    seen: dict[Key, int] = field(default_factory=dict)
    # Objects whose RotationApprovals arrived and are not judged yet (also before the object
    # itself was seen, as at startup): their next reconcile judges them. Keys of objects this
    # instance never handles (another shard's, none at all) stay here: a tuple each.
    approvals_waiting: set[Key] = field(default_factory=set)
    scheduler: Scheduler = field(init=False)
    # What the metadata-only watch shows of keyrotor's Secrets (no data).
    secrets: SecretCache = field(init=False)
    secret_watch: SecretWatch | None = None
    # The audit trail (keyrotor.audit.AuditLog) and the emergency approvals' judge
    # (keyrotor.approvals.Approvers); None: not audited / revoke-now ignored.
    audit: Any = None
    approvals: Any = None

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(self.reconcile, workers=self.workers)
        self.secrets = SecretCache(wake=self.drifted)

    def drifted(self, key: Key) -> None:
        """A Secret was deleted or written by someone else: look at its owner now (if it is
        one of this instance's objects; other shards watch their own)."""
        if key in self.seen:
            self.scheduler.wake(key)

    def start_secret_watch(self) -> None:
        patterns = any(c in n for n in self.namespaces for c in "*?[!")
        self.secret_watch = SecretWatch(self.secrets, self.api.core,
                                        () if patterns else self.namespaces)
        self.secret_watch.start(asyncio.get_running_loop())

    async def stop_secret_watch(self) -> None:
        if self.secret_watch is not None:
            self.secret_watch.stop()

    @classmethod
    def create(cls, api: KubeApi, *, phase_pause: float = 0.0,
               namespaces: Sequence[str] = (), workers: int = 16,
               restart_window: float = DEFAULT_WINDOW, shard: str | None = None,
               other_shards: Sequence[str] = (), audit: Any = None,
               approvals: Any = None) -> Shared:
        return cls(api=api, restarter=Restarter(api, window=restart_window),
                   phase_pause=phase_pause, namespaces=tuple(namespaces), workers=workers,
                   shard=shard, other_shards=frozenset(other_shards), audit=audit,
                   approvals=approvals)

    def mine(self, labels: dict[str, str]) -> bool:
        """Whether this instance handles an object with these labels."""
        label = labels.get(SHARD_LABEL)
        if self.shard is not None:
            return label == self.shard
        return label not in self.other_shards

    async def reconcile(self, key: Key, hint: dict[str, Any] | None) -> tuple[float, bool]:
        reconciler = self.busy.pop(key, None) or Reconciler(
            api=self.api, phase_pause=self.phase_pause, restarter=self.restarter,
            secrets=self.secrets, audit=self.audit, approvals=self.approvals)
        if key in self.approvals_waiting:  # taken now: one arriving meanwhile adds it again
            self.approvals_waiting.discard(key)
            reconciler.approvals_waiting = True
        delay = await reconciler.reconcile(*key, body=hint)
        if reconciler.approvals_waiting:  # not judged in this reconcile (an error, say)
            self.approvals_waiting.add(key)
        if reconciler.busy:
            self.busy[key] = reconciler
        return delay, reconciler.pausing


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    shared: Shared = memo.shared
    # Watching named namespaces needs no list of namespaces nor of CRDs: without scanning,
    # kopf asks for neither, so a namespaced install needs no cluster-wide permission at all.
    settings.scanning.disabled = bool(shared.namespaces) and not any(
        c in n for n in shared.namespaces for c in "*?[!")
    # kopf runs a worker per object that has events queued and keeps it 5 s after its last
    # event; a restart delivers every object at once. observe() only tells the scheduler, so
    # a worker may leave at once. (A worker_limit made it worse: 85 s and 505 MB at 10,000,
    # the bodies waiting in kopf's queues instead of in workers.)
    settings.queueing.idle_timeout = 0.5
    # The initial listing in pages: at 10,000 objects one answer of every body at once was
    # most of a restart's peak (see bench/RESULTS.md, restart with chunk_size).
    settings.watching.chunk_size = 500
    # Sharding on the server (a label selector on kopf's list and watch), as Flux does: a
    # shard receives only its own objects' events. observe() still checks the label: a
    # relabelled object arrives once more, as DELETED with its new labels, and is forgotten.
    if shared.shard is not None:
        selector = f"{SHARD_LABEL}={shared.shard}"
    elif shared.other_shards:
        selector = f"{SHARD_LABEL} notin ({','.join(sorted(shared.other_shards))})"
    else:
        selector = ""
    if selector:
        settings.watching.label_selectors[GROUP, PLURAL] = selector
        log.info("watching only the RotatingSecrets matching %s (server-side)", selector)
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf's credentials from where keyrotor's own client finds them (in-cluster first, then
    the kubeconfig; :mod:`keyrotor.kubehttp`). Without a login handler kopf logs in through the
    official ``kubernetes`` package, which ``keyrotor run`` keeps out of the process. kopf
    calls this again on a 401, which re-reads a rotated ServiceAccount token."""
    from pathlib import Path

    from keyrotor import kubehttp

    creds = kubehttp.load()
    token = creds.token
    if creds.token_file:
        token = Path(creds.token_file).read_text().strip()
    return kopf.ConnectionInfo(
        server=creds.server, ca_path=creds.ca_file, ca_data=creds.ca_data,
        insecure=creds.insecure or None, certificate_path=creds.cert_file,
        certificate_data=creds.cert_data, private_key_path=creds.key_file,
        private_key_data=creds.key_data, token=token or None, username=creds.username,
        password=creds.password, default_namespace=creds.namespace)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def observe(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Tell the scheduler what exists and what changed (async: it runs on the event loop)."""
    shared: Shared = memo.shared
    meta = body.get("metadata") or {}
    key: Key = (meta.get("namespace", ""), meta.get("name", ""))
    if not shared.mine(meta.get("labels") or {}):
        # Another shard's (kopf filters no labels on the server; a relabelled object moves).
        shared.approvals_waiting.discard(key)
        if key in shared.scheduler or key in shared.seen:
            shared.scheduler.forget(key)
            shared.seen.pop(key, None)
            shared.busy.pop(key, None)
            metrics.forget(*key)
        return
    if event.get("type") == "DELETED":
        shared.scheduler.forget(key)
        shared.approvals_waiting.discard(key)
        shared.seen.pop(key, None)
        shared.busy.pop(key, None)
        metrics.forget(*key)
        await apply_deletion_policy(shared.api, dict(body))
        return
    if meta.get("deletionTimestamp"):
        if OLD_FINALIZER in (meta.get("finalizers") or ()):
            await asyncio.to_thread(shared.api.remove_finalizer, *key, OLD_FINALIZER)
        return
    annotations = meta.get("annotations") or {}
    seen = hash((meta.get("uid"), meta.get("generation"), annotations.get(TRIGGER_ANNOTATION),
                 annotations.get(REQUEST_ANNOTATION)))
    if shared.seen.get(key) != seen:
        shared.seen[key] = seen
        shared.scheduler.wake(key, hint=dict(body))


@kopf.on.event(GROUP, VERSION, "rotationapprovals")
async def approval_arrived(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo,
                           **_: Any) -> None:
    """A RotationApproval wakes its RotatingSecret, which judges (and deletes) it, whether or
    not a request is open."""
    shared: Shared = memo.shared
    if event.get("type") == "DELETED" or shared.approvals is None:
        return
    key: Key = ((body.get("metadata") or {}).get("namespace", ""),
                str((body.get("spec") or {}).get("rotatingSecret", "")))
    shared.approvals_waiting.add(key)
    if key in shared.seen:
        shared.scheduler.wake(key)


async def apply_deletion_policy(api: KubeApi, body: dict[str, Any]) -> None:
    """``Delete``: remove the Secret now (the garbage collector would, later). ``Retain``:
    nothing to do, the Secret has no ownerReference."""
    meta, spec = body["metadata"], body.get("spec") or {}
    secret_name = spec.get("secretName")
    if spec.get("deletionPolicy", "Retain") != "Delete" or not secret_name:
        return
    owner = Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"],
                  garbage_collected=True)
    secret = await asyncio.to_thread(api.get_secret, owner.namespace, secret_name)
    if secret is None or not owner.owns(secret):
        return  # not ours: never touch it
    await asyncio.to_thread(api.delete_secret, owner.namespace, secret_name,
                            uid=secret["metadata"]["uid"])
    log.info("%s/%s: deleted Secret %s (deletionPolicy Delete)", owner.namespace, owner.name,
             secret_name)
