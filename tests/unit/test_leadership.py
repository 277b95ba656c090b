"""Leader election's rules on an in-memory Lease store with injected clocks (the real Lease on
the real API server is tested in tests/operator/test_leader_election.py)."""

from __future__ import annotations

import copy
import datetime
from dataclasses import dataclass, field
from typing import Any

import pytest

from keyrotor.errors import Conflict
from keyrotor.leadership import LeaderElector, LeaseConfig


@dataclass
class FakeLeases:
    """Stores one Lease; writes need the stored resourceVersion, like the API server."""

    leases: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    version: int = 0

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        lease = self.leases.get((namespace, name))
        return copy.deepcopy(lease) if lease else None

    def create(self, namespace: str, body: dict[str, Any]) -> None:
        key = (namespace, body["metadata"]["name"])
        if key in self.leases:
            raise Conflict("exists")
        self._store(key, body)

    def replace(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        stored = self.leases[(namespace, name)]
        if body["metadata"].get("resourceVersion") != stored["metadata"]["resourceVersion"]:
            raise Conflict("stale")
        self._store((namespace, name), body)

    def _store(self, key: tuple[str, str], body: dict[str, Any]) -> None:
        self.version += 1
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(self.version)
        self.leases[key] = body


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(store: FakeLeases, clock: Clock, identity: str) -> LeaderElector:
    config = LeaseConfig(namespace="ops", identity=identity, lease_duration=15,
                         renew_deadline=10, retry_period=2)
    # Wall clocks deliberately far apart: expiry must not depend on them.
    skew = {"a": 0, "b": 3600}[identity]
    return LeaderElector(store, config, monotonic=clock, wall=lambda: datetime.datetime(
        2026, 12, 2, tzinfo=datetime.UTC) + datetime.timedelta(seconds=clock.now + skew))


def test_one_leader_takeover_after_expiry_and_transitions_counted() -> None:
    store, clock = FakeLeases(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    assert a.try_acquire_or_renew() is True
    assert b.try_acquire_or_renew() is False
    clock.now += 10
    assert a.try_acquire_or_renew() is True  # renewed: b saw a new record
    assert b.try_acquire_or_renew() is False
    clock.now += 14.9  # a stops renewing; b waits a whole duration from what it last saw
    assert b.try_acquire_or_renew() is False
    clock.now += 0.2
    assert b.try_acquire_or_renew() is True
    spec = store.get("ops", "keyrotor")["spec"]  # type: ignore[index]
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
    assert a.try_acquire_or_renew() is False  # the old leader finds it taken


def test_release_hands_over_at_once() -> None:
    store, clock = FakeLeases(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    a.leading = True
    a.release()
    assert b.try_acquire_or_renew() is True


def test_racing_standbys_one_wins() -> None:
    store, clock = FakeLeases(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    lease_seen_by_b = None

    real_get = store.get

    def get_then_let_a_write(namespace: str, name: str) -> dict[str, Any] | None:
        nonlocal lease_seen_by_b
        lease_seen_by_b = real_get(namespace, name)
        a.try_acquire_or_renew()  # a creates/renews between b's read and b's write
        return lease_seen_by_b

    assert a.try_acquire_or_renew()
    clock.now += 100  # expired for everyone
    b.api = type("Racing", (), {"get": staticmethod(get_then_let_a_write),
                                "replace": store.replace, "create": store.create})()
    assert b.try_acquire_or_renew() is False  # its write carried a stale resourceVersion
    assert store.get("ops", "keyrotor")["spec"]["holderIdentity"] == "a"  # type: ignore[index]


def test_timings_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="retry-period < renew-deadline < lease-duration"):
        LeaseConfig(namespace="ops", lease_duration=5, renew_deadline=10, retry_period=2)
