"""Leader election on a ``coordination.k8s.io/v1`` Lease, the way client-go's leaderelection does.

kopf's peering pauses operators that see each other but is not leader election: two replicas
would both reconcile while the peering object is being written. keyrotor instead runs kopf only
in the process that holds the Lease; a standby watches nothing and writes nothing but its
attempts on the Lease.

The design follows client-go, for the same reasons:

* Expiry is judged on the observer's own monotonic clock from the moment it *saw* the Lease
  record change, never by comparing the holder's ``renewTime`` with the local wall clock, so
  clock skew between nodes cannot make two leaders.
* Every write carries the Lease's ``resourceVersion``: of two standbys racing for an expired
  Lease, one gets 409 and stays standby.
* The leader renews every ``retry_period``; if it cannot renew for ``renew_deadline`` (shorter
  than ``lease_duration``), it stops leading before any standby may take over.
* On a graceful stop the leader releases the Lease (empty holder, duration 1 s), so a rolling
  update hands over at once instead of after ``lease_duration``.

The API calls are blocking (keyrotor's urllib3 client), so they run in worker threads.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from keyrotor import metrics
from keyrotor.errors import Conflict

log = logging.getLogger("keyrotor.leadership")
_MICROTIME = "%Y-%m-%dT%H:%M:%S.%fZ"


REPORT_URL_ANNOTATION = "keyrotor.io/report-url"


def default_identity() -> str:
    """The pod's name in a cluster (downward API), else host and process id."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str = "keyrotor"
    identity: str = field(default_factory=default_identity)
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    # Where this replica answers decoy reports (http://POD_IP:PORT): the leader publishes it
    # on the Lease, so that a standby a report reached can hand it on (keyrotor.decoys).
    advertise_url: str | None = None

    def __post_init__(self) -> None:
        if not self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election needs retry-period < renew-deadline < "
                             f"lease-duration (got {self.retry_period}, {self.renew_deadline}, "
                             f"{self.lease_duration})")


class LeaseApi(Protocol):
    """The three Lease calls leader election makes (see :class:`KubeLeases`)."""

    def get(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def create(self, namespace: str, body: dict[str, Any]) -> None: ...
    def replace(self, namespace: str, name: str, body: dict[str, Any]) -> None: ...


class KubeLeases:
    """:class:`LeaseApi` on keyrotor's own client (:class:`keyrotor.kube.KubeApi`, which also
    wraps a :class:`keyrotor.kubehttp.Client` or an official ``ApiClient``); 409 becomes
    :class:`Conflict`. Every call has the client's deadline, so a frozen API server makes a
    renewal fail (and the renew deadline count) instead of hanging it."""

    def __init__(self, api_client: Any) -> None:
        from keyrotor.kube import KubeApi

        self.api = api_client if isinstance(api_client, KubeApi) else KubeApi(api_client)

    @staticmethod
    def _path(namespace: str, name: str = "") -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases" + (
            f"/{name}" if name else "")

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.api.request("GET", self._path(namespace, name), verb="get",
                                resource="leases.coordination.k8s.io", namespace=namespace)

    def create(self, namespace: str, body: dict[str, Any]) -> None:
        self.api.request("POST", self._path(namespace), body=body, verb="create",
                         resource="leases.coordination.k8s.io", namespace=namespace)

    def replace(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        if self.api.request("PUT", self._path(namespace, name), body=body, verb="update",
                            resource="leases.coordination.k8s.io", namespace=namespace) is None:
            raise Conflict("the Lease is gone")  # 404: deleted since it was read


@dataclass
class LeaderElector:
    api: LeaseApi
    config: LeaseConfig
    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC)
    leading: bool = False
    # The last Lease record seen, and when (on the monotonic clock) it was first seen.
    _observed: tuple[Any, ...] | None = None
    _observed_at: float = 0.0

    async def acquire(self) -> None:
        """Return once this process holds the Lease; until then, try every retry period."""
        announced = False
        while not await asyncio.to_thread(self.try_acquire_or_renew):
            if not announced:
                holder = (self._observed or (None,))[0]
                log.info("standing by: Lease %s/%s is held by %s; taking over if it is not "
                         "renewed for %.0fs", self.config.namespace, self.config.name, holder,
                         self.config.lease_duration)
                announced = True
            await asyncio.sleep(self.config.retry_period * random.uniform(1.0, 1.2))  # noqa: S311
        self.leading = True
        metrics.LEADER.set(1)
        metrics.LEADER_CHANGES.inc()
        log.info("leading as %s (Lease %s/%s)", self.config.identity, self.config.namespace,
                 self.config.name)

    async def hold(self) -> None:
        """Renew until a renewal has failed for ``renew_deadline``; then return (leadership
        lost: the caller must stop reconciling at once)."""
        last_renewed = self.monotonic()
        while True:
            await asyncio.sleep(self.config.retry_period)
            try:
                renewed = await asyncio.to_thread(self.try_acquire_or_renew)
            except Exception as exc:  # the API server away: keep trying until the deadline
                log.warning("renewing the Lease failed: %s", exc)
                renewed = False
            if renewed:
                last_renewed = self.monotonic()
            elif self.monotonic() - last_renewed >= self.config.renew_deadline:
                self.leading = False
                metrics.LEADER.set(0)
                log.error("lost the Lease %s/%s (not renewed for %.0fs): stopping",
                          self.config.namespace, self.config.name, self.config.renew_deadline)
                return

    def release(self) -> None:
        """Give the Lease up (graceful stop), so a standby takes over without waiting."""
        if not self.leading:
            return
        self.leading = False
        metrics.LEADER.set(0)
        lease = self.api.get(self.config.namespace, self.config.name)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != \
                self.config.identity:
            return
        now = self.wall().strftime(_MICROTIME)
        lease["spec"].update(holderIdentity=None, leaseDurationSeconds=1, renewTime=now,
                             acquireTime=now)
        try:
            self.api.replace(self.config.namespace, self.config.name, lease)
            log.info("released the Lease %s/%s", self.config.namespace, self.config.name)
        except Conflict:
            pass  # someone took it already

    def leader_url(self) -> str | None:
        """Where the current leader answers decoy reports, if another process leads and
        published it. Blocking."""
        lease = self.api.get(self.config.namespace, self.config.name) or {}
        holder = (lease.get("spec") or {}).get("holderIdentity")
        if not holder or holder == self.config.identity:
            return None
        url = ((lease.get("metadata") or {}).get("annotations") or {}).get(REPORT_URL_ANNOTATION)
        return str(url) if url else None

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True if this process holds the Lease afterwards. Blocking."""
        cfg = self.config
        now = self.wall().strftime(_MICROTIME)
        lease = self.api.get(cfg.namespace, cfg.name)
        mine = {"holderIdentity": cfg.identity, "leaseDurationSeconds": int(cfg.lease_duration),
                "acquireTime": now, "renewTime": now, "leaseTransitions": 0}
        advertised = {REPORT_URL_ANNOTATION: cfg.advertise_url} if cfg.advertise_url else {}
        if lease is None:
            try:
                self.api.create(cfg.namespace, {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": cfg.name, "namespace": cfg.namespace,
                                 "annotations": advertised},
                    "spec": mine})
            except Conflict:
                return False
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"),
                  spec.get("leaseTransitions"))
        if record != self._observed:
            self._observed, self._observed_at = record, self.monotonic()
        duration = float(spec.get("leaseDurationSeconds") or cfg.lease_duration)
        if holder and holder != cfg.identity and \
                self.monotonic() < self._observed_at + duration:
            return False  # held, and renewed within its duration as far as we have seen
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == cfg.identity:
            mine.update(acquireTime=spec.get("acquireTime") or now,
                        leaseTransitions=transitions)
        else:
            mine["leaseTransitions"] = transitions + 1
            if holder:
                log.info("Lease %s/%s held by %s expired; taking over", cfg.namespace,
                         cfg.name, holder)
        lease["spec"] = mine  # resourceVersion stays in metadata: a precondition
        annotations = lease.setdefault("metadata", {}).get("annotations") or {}
        annotations.pop(REPORT_URL_ANNOTATION, None)  # a former leader's address goes
        lease["metadata"]["annotations"] = {**annotations, **advertised}
        try:
            self.api.replace(cfg.namespace, cfg.name, lease)
        except Conflict:
            return False
        self._observed = (cfg.identity, now, mine["leaseDurationSeconds"],
                          mine["leaseTransitions"])
        self._observed_at = self.monotonic()
        return True
