"""``keyrotor.client``: the consumer side of a rotating secret, for Python services.

Mount the Secret keyrotor owns as a volume and point :class:`RotatingSecret` at the folder.

* Acceptors (services that check a credential) call :meth:`RotatingSecret.verify`: a
  presented value is accepted when it equals whatever ``current``, ``next`` or ``previous``
  holds, compared in constant time. Pass ``identity=`` (the client's IP, user or API-key id)
  to rate-limit failed verifications per identity (:class:`RateLimit`).
* Decoys (``spec.decoys``): values published as retired versions that no legitimate client
  holds. ``verify`` answers :data:`DECOY` for one (never accepted), calls ``on_decoy``, counts
  ``keyrotor_client_decoy_presentations_total`` and reports the hit to the operator
  (``report_url=`` or ``$KEYROTOR_REPORT_URL``) from a background thread, so the operator posts
  a Warning event ``DecoyPresented`` and an audit entry. :data:`DECOY` and :data:`LIMITED`
  are strings that are *false* in a boolean context: ``if secret.verify(token):`` stays a
  correct acceptance check.
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
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from jwcrypto import jwk, jws, jwt
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

SLOTS = ("current", "next", "previous")
T = TypeVar("T")
log = logging.getLogger("keyrotor.client")
# Kept in step with keyrotor.publishing.secret (not imported: the library stays light).
FINGERPRINT_KEY = "fingerprint.key"
DECOY_PREFIX = "retired-"
DECOY_TAG_CONTEXT = b"keyrotor.io/decoy\x00"
REPORT_URL_ENV = "KEYROTOR_REPORT_URL"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class Refusal(str):
    """A result of :meth:`RotatingSecret.verify` that names why a value was refused. It is
    false in a boolean context, like None, so ``if verify(...)`` never accepts it."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False


DECOY = Refusal("decoy")      # a decoy was presented: the Secret has leaked
LIMITED = Refusal("limited")  # the identity is blocked: not even a right value is accepted


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
        self.failures = Counter(
            "keyrotor_client_verification_failures_total",
            "Presented values that matched no valid version (decoys included; not those "
            "refused while rate-limited)", ("secret",), registry=registry)
        self.rate_limited = Counter(
            "keyrotor_client_rate_limited_total",
            "Verifications refused because the identity was blocked", ("secret",),
            registry=registry)
        self.decoys = Counter(
            "keyrotor_client_decoy_presentations_total",
            "Presentations of a decoy value (spec.decoys): the Secret has leaked", ("secret",),
            registry=registry)
        self.reports = Counter(
            "keyrotor_client_decoy_reports_total",
            "Decoy reports to the operator, by result (sent, refused, failed, dropped)",
            ("secret", "result"), registry=registry)


# One set of collectors per registry, shared by every RotatingSecret using it. Keyed by the
# registry itself, weakly: an id() outlives its object and a new registry may reuse it (a test
# once got the collectors of a dead registry that way).
_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()


def _metrics(registry: CollectorRegistry) -> _Metrics:
    if registry not in _METRICS:
        _METRICS[registry] = _Metrics(registry)
    return _METRICS[registry]


def _versions(files: dict[str, bytes], path: Path) -> dict[str, str]:
    """Slot -> version from ``versions.json`` (absent in Secrets not written by keyrotor). A
    slot's version that is not a whole number is a damaged mount, not a version."""
    try:
        doc = json.loads(files.get("versions.json", b"{}"))
    except ValueError:
        return {}
    if not isinstance(doc, dict):
        return {}
    versions = {}
    for slot, version in doc.items():
        if slot not in SLOTS:
            continue
        if isinstance(version, bool) or not isinstance(version, int):
            raise SecretError(f"{path}: versions.json gives {slot!r} a version that is not a "
                              "whole number: the mount is damaged (is it the Secret keyrotor "
                              "writes?)")
        versions[slot] = str(version)
    return versions


def _decoys(files: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """(fingerprint, value) of each decoy in the mount: a ``retired-<N>`` file whose tag in
    ``versions.json`` is the keyed decoy tag. Anything else there is ignored."""
    key = files.get(FINGERPRINT_KEY)
    try:
        listed = json.loads(files.get("versions.json", b"{}")).get("retired") or {}
    except (ValueError, AttributeError):
        return []
    found = []
    for label, tag in (listed.items() if isinstance(listed, dict) and key else ()):
        value = files.get(f"{DECOY_PREFIX}{label}")
        if value is None or not isinstance(tag, str) or key is None:
            continue
        expected = "hmac-sha256:" + hmac.new(key, DECOY_TAG_CONTEXT + value,
                                             hashlib.sha256).hexdigest()[:16]
        if hmac.compare_digest(expected, tag):
            found.append(("hmac-sha256:" + hmac.new(key, value, hashlib.sha256)
                          .hexdigest()[:16], value))
    return found


@dataclass(frozen=True)
class RateLimit:
    """A token bucket per identity, spent by failed verifications only: ``burst`` failures
    in a row empty it, it refills at ``per_second``; an empty bucket blocks the identity for
    ``block_time`` seconds. At most ``max_identities`` are remembered (least recently seen
    forgotten first), so memory is bounded whatever the callers send."""

    burst: int = 10
    per_second: float = 10 / 60
    block_time: float = 60.0
    max_identities: int = 10_000


class RateLimiter:
    """Thread-safe token buckets keyed by identity, in an LRU of bounded size."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic, *,
                 label: str = "") -> None:
        self.limit = limit
        self.clock = clock
        self.label = label  # for the log line when an identity is blocked
        self._lock = threading.Lock()
        # identity -> [tokens, last refill, blocked until]
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def blocked(self, identity: str) -> bool:
        with self._lock:
            bucket = self._buckets.get(identity)
            return bucket is not None and self.clock() < bucket[2]

    def attempt(self, identity: str, *, failed: bool) -> bool:
        """Record one verification; True when the identity is blocked (refuse it). A failure
        spends a token; the one that empties the bucket starts the block."""
        now = self.clock()
        limit = self.limit
        with self._lock:
            bucket = self._buckets.get(identity)
            if bucket is None:
                bucket = [float(limit.burst), now, float("-inf")]
                self._buckets[identity] = bucket
                while len(self._buckets) > limit.max_identities:
                    self._buckets.popitem(last=False)
            self._buckets.move_to_end(identity)
            tokens, last, until = bucket
            if now < until:
                return True
            tokens = min(float(limit.burst), tokens + (now - last) * limit.per_second)
            blocking = False
            if failed:
                tokens -= 1
                if tokens < 1:
                    until, blocking = now + limit.block_time, True
            bucket[:] = [tokens, now, until]
        if blocking:
            log.warning("identity %r blocked for %.0f s: too many failures%s",
                        identity[:256], limit.block_time,
                        f" of {self.label}" if self.label else "")
        return False


class _Reporter:
    """Posts decoy reports to the operator from one daemon thread: a short timeout, a few
    retries (a standby operator answers 503), and a bounded queue; verify never waits."""

    def __init__(self, url: str, secret: str, metrics: _Metrics, *, timeout: float = 2.0,
                 attempts: int = 6, backoff: float = 0.5) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"report URL {url!r}: use http:// or https://")
        self.url = url.rstrip("/")
        if not self.url.endswith("/v1/decoy-reports"):
            self.url += "/v1/decoy-reports"
        self.secret = secret
        self.metrics = metrics
        self.timeout, self.attempts, self.backoff = timeout, attempts, backoff
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=100)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, report: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(report)
        except queue.Full:
            self.metrics.reports.labels(self.secret, "dropped").inc()
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"keyrotor-decoy-reports-{self.secret}")
                self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                report = self.queue.get(timeout=30)
            except queue.Empty:
                return  # idle: a new report starts the thread again
            self.metrics.reports.labels(self.secret, self._send(report)).inc()

    def _send(self, report: dict[str, Any]) -> str:
        body = json.dumps(report).encode()
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=body, method="POST",  # noqa: S310
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout):  # noqa: S310
                    return "sent"
            except urllib.error.HTTPError as exc:
                if exc.code < 500 and exc.code != 429:
                    log.warning("decoy report for %s refused by the operator: HTTP %s",
                                self.secret, exc.code)
                    return "refused"
            except OSError:
                pass
        log.warning("decoy report for %s not delivered to %s after %d attempts",
                    self.secret, self.url, self.attempts)
        return "failed"


def _pod_namespace() -> str | None:
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    with contextlib.suppress(OSError):
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    return None


class RotatingSecret:
    def __init__(self, path: str | os.PathLike[str], *, refresh: float = 1.0,
                 registry: CollectorRegistry = REGISTRY,
                 clock: Callable[[], float] = time.monotonic,
                 rate_limit: RateLimit | None = RateLimit(),
                 on_decoy: Callable[[str, str | None], None] | None = None,
                 report_url: str | None = None, namespace: str | None = None,
                 rotating_secret: str | None = None,
                 compare: Callable[[bytes, bytes], bool] = hmac.compare_digest) -> None:
        """``path``: the mounted Secret's folder. ``rate_limit``: per-identity limits for
        :meth:`verify` (None: off). ``on_decoy(fingerprint, identity)``: called on every
        decoy presentation. ``report_url`` (else ``$KEYROTOR_REPORT_URL``): the operator's
        report endpoint, told of every decoy presentation as RotatingSecret ``namespace``
        (else ``$POD_NAMESPACE`` or the pod's service-account namespace) / ``rotating_secret``
        (else the folder's name). ``compare``: the constant-time comparison (tests inject
        one to see every comparison made)."""
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
        self._state: tuple[dict[str, bytes], list[tuple[str, bytes]]] = ({}, [])
        self._compare = compare
        self.limiter = RateLimiter(rate_limit, clock, label=self.name) \
            if rate_limit is not None else None
        self.on_decoy = on_decoy
        self.namespace = namespace or _pod_namespace()
        self.rotating_secret = rotating_secret or self.name
        url = report_url or os.environ.get(REPORT_URL_ENV)
        self._reporter = _Reporter(url, self.name, self._metrics) if url else None
        # At 0 from the start: increase() and rate() see the first decoy or failure, and the
        # alert rules' series exist before anything goes wrong.
        for counter in (self._metrics.decoys, self._metrics.failures,
                        self._metrics.rate_limited):
            counter.labels(self.name)
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
            # Read through ..data, not the top-level links: kubelet swaps ..data first and
            # adds the link of a new key (``next``) after, so a reload in between would miss
            # it and, the marker being current, never look again.
            data = self.path / "..data"
            folder = data if data.is_symlink() and data.is_dir() else self.path
            try:
                files = {p.name: p.read_bytes() for p in folder.iterdir()
                         if not p.name.startswith("..") and p.is_file()}
            except FileNotFoundError:
                continue  # kubelet deleted the old folder while we read it: read again
            if marker == self._current_marker():
                break
        else:
            raise SecretError(f"{self.path} kept changing while being read")
        # An empty slot is no credential (a truncated file): never valid, not even as "".
        slots = {slot: files[slot] for slot in SLOTS if files.get(slot)}
        if "current" in files and not files["current"]:
            raise SecretError(f"{self.path}: 'current' is empty: the mount is damaged")
        if "current" not in slots:
            raise SecretError(f"{self.path} has no 'current' key: is this a Secret keyrotor "
                              "owns, and has its RotatingSecret issued a version yet?")
        if self._marker is not None and marker != self._marker:
            self._metrics.reloads.labels(self.name).inc()
        self._slots, self._files, self._marker = slots, files, marker
        self._state = (slots, _decoys(files))
        self._versions = _versions(files, self.path)
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

    def _snapshot(self) -> tuple[dict[str, bytes], list[tuple[str, bytes]]]:
        """The slots and the decoys, from one load."""
        self._fresh()
        return self._state

    def decoy_fingerprints(self) -> list[str]:
        """The fingerprints of the decoys in the mounted Secret (no values)."""
        return [fp for fp, _ in self._snapshot()[1]]

    def files(self) -> dict[str, bytes]:
        """Every key of the mounted Secret (``current.pub``, ``jwks.json``, ...)."""
        self._fresh()
        return self._files

    # ---- acceptors ---------------------------------------------------------------------------

    def verify(self, presented: bytes | str, *, identity: str | None = None) -> str | None:
        """The slot whose value equals ``presented``, or a refusal: None (no match),
        :data:`DECOY` (a decoy: never accepted; reported) or :data:`LIMITED` (``identity``
        is blocked after too many failures: refused even when right). Both refusals are
        false in a boolean context.

        Every call compares ``presented`` with every slot and every decoy, in constant time,
        before anything else is decided: whether the identity is blocked, which value matched
        and whether any did cannot be told from the time taken."""
        value = presented.encode() if isinstance(presented, str) else presented
        slots, decoys = self._snapshot()
        matched = None
        for slot, held in slots.items():
            # Compare against every slot, always: timing reveals nothing about which matched.
            if self._compare(value, held) and matched is None:
                matched = slot
        decoy = None
        for fingerprint, held in decoys:
            if self._compare(value, held) and decoy is None:
                decoy = fingerprint
        limited = self.limiter is not None and identity is not None and \
            self.limiter.attempt(identity, failed=matched is None)
        if decoy is not None:
            self._decoy_presented(decoy, identity)  # even while limited: the alarm matters
        self._metrics.verifications.labels(self.name, "none" if limited else matched or "none",
                                           "" if limited else self._label(matched)).inc()
        if limited:
            self._metrics.rate_limited.labels(self.name).inc()
            return LIMITED
        if matched is None:
            self._metrics.failures.labels(self.name).inc()
            return DECOY if decoy is not None else None
        return matched

    def _decoy_presented(self, fingerprint: str, identity: str | None) -> None:
        self._metrics.decoys.labels(self.name).inc()
        log.warning("decoy %s of %s presented by %s: the Secret has leaked", fingerprint,
                    self.name, identity or "an unknown client")
        if self._reporter is not None:
            self._reporter.submit({"namespace": self.namespace, "name": self.rotating_secret,
                                   "fingerprint": fingerprint,
                                   "identity": (identity or "")[:256]})
        if self.on_decoy is not None:
            try:
                self.on_decoy(fingerprint, identity)
            except Exception:
                log.exception("on_decoy callback failed for %s", self.name)

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
        try:
            doc = json.loads(files[name])
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise SecretError(f"{self.path}: {name!r} is not a JSON object (a JWK or JWKS)")
        return doc

    def _jwk_error(self, name: str) -> SecretError:
        return SecretError(f"{self.path}: {name!r} does not hold a usable JWK")

    def sign_jwt(self, claims: dict[str, Any]) -> str:
        """A JWT over ``claims`` signed with ``current``'s private key; the header names its
        ``kid``."""
        files = self.files()
        name = "current.jwk" if "current.jwk" in files else "current"
        doc = self._jwk(name)
        try:
            token = jwt.JWT(header={"alg": doc["alg"], "kid": doc["kid"], "typ": "JWT"},
                            claims=claims)
            token.make_signed_token(jwk.JWK(**doc))
        except Exception as exc:  # KeyError, TypeError, jwcrypto's many kinds
            raise self._jwk_error(name) from exc
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
        keys = self._jwk("jwks.json").get("keys", [])
        if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
            raise self._jwk_error("jwks.json")
        published = {k.get("kid"): k for k in keys}
        slot = None
        if kid in published:
            files = self.files()
            slot = next((s for s in SLOTS if f"{s}.pub.jwk" in files
                         and self._jwk(f"{s}.pub.jwk").get("kid") == kid), None)
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
