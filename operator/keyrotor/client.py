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
* For key pairs with JWKs, :meth:`RotatingSecret.sign_jwt` signs with ``current``'s private
  JWK and names it by ``kid``; :meth:`RotatingSecret.verify_jwt` picks the key from
  ``jwks.json`` by the token's ``kid``, so tokens signed before a promotion keep verifying
  while the old key is ``previous``.

Hot reload: kubelet updates a mounted Secret by writing a new timestamped folder and swapping
the ``..data`` symlink atomically. The client notices the swap with one ``readlink`` (at most
every ``refresh`` seconds) and reloads, never reading a half-written state. Which slot was
used and every failure are counted in Prometheus metrics (``keyrotor_client_...``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from jwcrypto import jwk, jws, jwt
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

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
            "Credentials checked by an acceptor, by the slot (and its version) that matched "
            "(none: rejected)", ("secret", "slot", "version"), registry=registry)
        self.presentations = Counter(
            "keyrotor_client_presentations_total",
            "Credentials presented, by slot, version and result",
            ("secret", "slot", "version", "result"), registry=registry)
        self.versions = Gauge(
            "keyrotor_client_secret_version",
            "The version each slot of the mounted Secret holds now (from versions.json)",
            ("secret", "slot"), registry=registry)
        self.reloads = Counter("keyrotor_client_reloads_total",
                               "Reloads after kubelet swapped the mounted Secret", ("secret",),
                               registry=registry)


# One set of collectors per registry, shared by every RotatingSecret using it. Keyed by the
# registry itself, weakly: an id() outlives its object and a new registry may reuse it (a test
# once got the collectors of a dead registry that way).
_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()


def _metrics(registry: CollectorRegistry) -> _Metrics:
    if registry not in _METRICS:
        _METRICS[registry] = _Metrics(registry)
    return _METRICS[registry]


def _versions(files: dict[str, bytes]) -> dict[str, str]:
    """Slot -> version from ``versions.json`` (absent in Secrets not written by keyrotor)."""
    try:
        doc = json.loads(files.get("versions.json", b"{}"))
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in doc.items() if k in SLOTS} if isinstance(doc, dict) else {}


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
        self._files: dict[str, bytes] = {}
        self._versions: dict[str, str] = {}
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
        for _ in range(10):
            marker = self._current_marker()
            try:
                files = {p.name: p.read_bytes() for p in self.path.iterdir()
                         if not p.name.startswith("..") and p.is_file()}
            except FileNotFoundError:
                continue  # kubelet deleted the old folder while we read it: read again
            if marker == self._current_marker():
                break
        else:
            raise SecretError(f"{self.path} kept changing while being read")
        slots = {slot: files[slot] for slot in SLOTS if slot in files}
        if "current" not in slots:
            raise SecretError(f"{self.path} has no 'current' key: is this a Secret keyrotor "
                              "owns, and has its RotatingSecret issued a version yet?")
        if self._marker is not None and marker != self._marker:
            self._metrics.reloads.labels(self.name).inc()
        self._slots, self._files, self._marker = slots, files, marker
        self._versions = _versions(files)
        for slot in SLOTS:
            if slot in self._versions and slot in slots:
                self._metrics.versions.labels(self.name, slot).set(int(self._versions[slot]))
            else:
                with contextlib.suppress(KeyError):  # never set: nothing to remove
                    self._metrics.versions.remove(self.name, slot)

    def version(self, slot: str = "current") -> int | None:
        """The version ``slot`` holds (None when unknown or empty)."""
        self._fresh()
        found = self._versions.get(slot)
        return int(found) if found else None

    def _label(self, slot: str | None) -> str:
        return self._versions.get(slot, "") if slot else ""

    def _fresh(self) -> dict[str, bytes]:
        now = self._clock()
        with self._lock:
            if now - self._checked >= self.refresh:
                self._checked = now
                if self._current_marker() != self._marker:
                    self._load()
            return self._slots

    def files(self) -> dict[str, bytes]:
        """Every key of the mounted Secret (``current.pub``, ``jwks.json``, ...)."""
        self._fresh()
        return self._files

    # ---- acceptors ---------------------------------------------------------------------------

    def verify(self, presented: bytes | str) -> str | None:
        """The slot whose value equals ``presented`` (constant time), or None."""
        value = presented.encode() if isinstance(presented, str) else presented
        matched = None
        for slot, held in self._fresh().items():
            # Compare against every slot, always: timing reveals nothing about which matched.
            if hmac.compare_digest(value, held) and matched is None:
                matched = slot
        self._metrics.verifications.labels(self.name, matched or "none",
                                           self._label(matched)).inc()
        return matched

    # ---- presenters --------------------------------------------------------------------------

    def current(self) -> bytes:
        return self._fresh()["current"]

    def call_with_fallback(self, call: Callable[[bytes], T]) -> T:
        """``call(current)``; if it raises :class:`Rejected`, ``call(previous)`` when there is
        one, and then ``current`` once more: under OneKey the target may swap from previous
        to current between the first two calls, and then only current works. The last
        rejection propagates."""
        slots = self._fresh()
        order = ["current", "previous", "current"] if "previous" in slots else ["current"]
        for index, slot in enumerate(order):
            try:
                result = call(slots[slot])
            except Rejected:
                self._metrics.presentations.labels(self.name, slot, self._label(slot),
                                                   "rejected").inc()
                if index == len(order) - 1:
                    raise
                continue
            self._metrics.presentations.labels(self.name, slot, self._label(slot),
                                               "accepted").inc()
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
        self._metrics.verifications.labels(self.name, matched or "none",
                                           self._label(matched)).inc()
        return matched

    # ---- JWTs with the key pair's JWKs, by kid -----------------------------------------------

    def _jwk(self, name: str) -> dict[str, Any]:
        files = self.files()
        if name not in files:
            raise SecretError(f"{self.path} has no {name!r}: use generator.keyPair with "
                              "formats including jwk")
        doc: dict[str, Any] = json.loads(files[name])
        return doc

    def sign_jwt(self, claims: dict[str, Any]) -> str:
        """A JWT over ``claims`` signed with ``current``'s private key; the header names its
        ``kid``."""
        files = self.files()
        doc = self._jwk("current.jwk" if "current.jwk" in files else "current")
        token = jwt.JWT(header={"alg": doc["alg"], "kid": doc["kid"], "typ": "JWT"},
                        claims=claims)
        token.make_signed_token(jwk.JWK(**doc))
        self._metrics.presentations.labels(self.name, "current", self._label("current"),
                                           "signed").inc()
        signed: str = token.serialize()
        return signed

    def verify_jwt(self, token: str) -> tuple[str, dict[str, Any]] | None:
        """(the slot whose key signed it, the claims), or None when no published key did.
        The key is chosen from ``jwks.json`` by the token's ``kid``."""
        try:
            header = jws.JWS()
            header.deserialize(token)
            kid = header.jose_header.get("kid")
        except (jws.InvalidJWSObject, ValueError):
            kid = None
        published = {k.get("kid"): k for k in self._jwk("jwks.json").get("keys", [])}
        slot = None
        if kid in published:
            files = self.files()
            slot = next((s for s in SLOTS if f"{s}.pub.jwk" in files
                         and json.loads(files[f"{s}.pub.jwk"]).get("kid") == kid), None)
        claims = None
        if slot is not None:
            doc = published[kid]
            try:
                checked = jwt.JWT(jwt=token, key=jwk.JWK(**doc), algs=[doc["alg"]])
                claims = json.loads(checked.claims)
            except Exception:  # jwcrypto raises many kinds for a bad token
                claims = None
        matched = slot if claims is not None else None
        self._metrics.verifications.labels(self.name, matched or "none",
                                           self._label(matched)).inc()
        return (matched, claims) if matched is not None and claims is not None else None
