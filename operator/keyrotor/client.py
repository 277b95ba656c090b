"""``keyrotor.client``: the consumer side of a rotating secret, for Python services.

Mount the Secret keyrotor owns as a volume and point :class:`RotatingSecret` at the folder.

* Acceptors (services that check a credential) call :meth:`RotatingSecret.verify`: a
  presented value is accepted when it equals whatever ``current``, ``next`` or ``previous``
  holds, compared in constant time.
* Presenters (clients that send it) use :meth:`RotatingSecret.current`, or
  :meth:`RotatingSecret.call_with_fallback`, which retries with ``previous`` when the target
  rejects ``current`` (the OneKey strategy: presenters get the new key before the target).
* :meth:`RotatingSecret.sign` / :meth:`RotatingSecret.verify_signature` are HMAC-SHA256
  helpers on the same slots.

Hot reload: kubelet updates a mounted Secret by writing a new timestamped folder and swapping
the ``..data`` symlink atomically. The client notices the swap with one ``readlink`` (at most
every ``refresh`` seconds) and reloads, never reading a half-written state. Which slot was
used and every failure are counted in Prometheus metrics (``keyrotor_client_...``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter

SLOTS = ("current", "next", "previous")
T = TypeVar("T")


class SecretError(RuntimeError):
    """The mounted Secret is missing or unusable; the message says what to check."""


class Rejected(Exception):
    """Raise from the function given to :meth:`RotatingSecret.call_with_fallback` when the
    target refused the credential (e.g. HTTP 401), so the next slot is tried."""


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.verifications = Counter(
            "keyrotor_client_verifications_total",
            "Credentials checked by an acceptor, by the slot that matched (none: rejected)",
            ("secret", "slot"), registry=registry)
        self.presentations = Counter(
            "keyrotor_client_presentations_total",
            "Credentials presented, by slot and result", ("secret", "slot", "result"),
            registry=registry)
        self.reloads = Counter("keyrotor_client_reloads_total",
                               "Reloads after kubelet swapped the mounted Secret", ("secret",),
                               registry=registry)


_METRICS: dict[int, _Metrics] = {}


def _metrics(registry: CollectorRegistry) -> _Metrics:
    # One set of collectors per registry: several RotatingSecret objects share them.
    if id(registry) not in _METRICS:
        _METRICS[id(registry)] = _Metrics(registry)
    return _METRICS[id(registry)]


class RotatingSecret:
    def __init__(self, path: str | os.PathLike[str], *, refresh: float = 1.0,
                 registry: CollectorRegistry = REGISTRY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.refresh = refresh
        self._clock = clock
        self._metrics = _metrics(registry)
        self._lock = threading.Lock()
        self._marker: str | None = None
        self._checked = float("-inf")
        self._slots: dict[str, bytes] = {}
        self._load()

    # ---- loading -----------------------------------------------------------------------------

    def _current_marker(self) -> str:
        data = self.path / "..data"
        if data.is_symlink():
            return os.readlink(data)  # kubelet's atomic swap changes this target
        # Not a kubelet mount (a plain folder): fall back to the files' change times.
        stamps = [str(p.stat().st_mtime_ns) for p in sorted(self.path.glob("*")) if p.is_file()]
        return ",".join(stamps)

    def _load(self) -> None:
        if not self.path.is_dir():
            raise SecretError(f"{self.path} does not exist: mount the Secret keyrotor owns "
                              "there (volumes[].secret.secretName and volumeMounts[].mountPath)")
        marker = self._current_marker()
        slots = {}
        for slot in SLOTS:
            file = self.path / slot
            if file.is_file():
                slots[slot] = file.read_bytes()
        if "current" not in slots:
            raise SecretError(f"{self.path} has no 'current' key: is this a Secret keyrotor "
                              "owns, and has its RotatingSecret issued a version yet?")
        if marker != self._current_marker():
            return self._load()  # swapped while reading: read the new state instead
        if self._marker is not None and marker != self._marker:
            self._metrics.reloads.labels(self.name).inc()
        self._slots, self._marker = slots, marker

    def _fresh(self) -> dict[str, bytes]:
        now = self._clock()
        with self._lock:
            if now - self._checked >= self.refresh:
                self._checked = now
                if self._current_marker() != self._marker:
                    self._load()
            return self._slots

    # ---- acceptors ---------------------------------------------------------------------------

    def verify(self, presented: bytes | str) -> str | None:
        """The slot whose value equals ``presented`` (constant time), or None."""
        value = presented.encode() if isinstance(presented, str) else presented
        matched = None
        for slot, held in self._fresh().items():
            # Compare against every slot, always: timing reveals nothing about which matched.
            if hmac.compare_digest(value, held) and matched is None:
                matched = slot
        self._metrics.verifications.labels(self.name, matched or "none").inc()
        return matched

    # ---- presenters --------------------------------------------------------------------------

    def current(self) -> bytes:
        return self._fresh()["current"]

    def call_with_fallback(self, call: Callable[[bytes], T]) -> T:
        """``call(current)``; if it raises :class:`Rejected`, ``call(previous)`` when there is
        one. The last rejection propagates."""
        slots = self._fresh()
        order = [s for s in ("current", "previous") if s in slots]
        for index, slot in enumerate(order):
            try:
                result = call(slots[slot])
            except Rejected:
                self._metrics.presentations.labels(self.name, slot, "rejected").inc()
                if index == len(order) - 1:
                    raise
                continue
            self._metrics.presentations.labels(self.name, slot, "accepted").inc()
            return result
        raise AssertionError("unreachable: 'current' is always present")

    # ---- HMAC helpers ------------------------------------------------------------------------

    def sign(self, message: bytes) -> str:
        """HMAC-SHA256 of ``message`` with ``current``, hex."""
        return hmac.new(self.current(), message, hashlib.sha256).hexdigest()

    def verify_signature(self, message: bytes, signature: str) -> str | None:
        """The slot whose key made ``signature``, or None."""
        matched = None
        for slot, key in self._fresh().items():
            expected = hmac.new(key, message, hashlib.sha256).hexdigest()
            if hmac.compare_digest(expected, signature) and matched is None:
                matched = slot
        self._metrics.verifications.labels(self.name, matched or "none").inc()
        return matched
