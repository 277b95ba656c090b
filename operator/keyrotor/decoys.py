"""Decoy reports: how the operator learns that a decoy (``spec.decoys``) was presented.

A decoy is a value keyrotor publishes in the Secret as a retired version that no legitimate
client holds (see :mod:`keyrotor.publishing.secret`). Only the acceptor sees a presentation,
so the consumer library (:mod:`keyrotor.client`) reports each one here::

    POST /v1/decoy-reports   {"namespace": NS, "name": NAME, "fingerprint": "hmac-sha256:…",
                              "identity": "203.0.113.7"}

served on the operator's health port (``--liveness-port``, 8081; the chart's Service exposes it
as port ``reports``). ``name`` is the RotatingSecret, or its ``spec.secretName``. The endpoint

* on a standby operator (leader election), hands the report on to the leader at the address
  the leader publishes on its Lease (``--advertise-url``, from the pod's IP in the chart) and
  returns the leader's answer; it answers 503 when it cannot (no leader, no address, the
  leader away) or before it is up, so the library retries (a 2 s timeout, six attempts with
  backoff, from a background thread: ``verify`` never waits for it or fails because of it);
* checks the fingerprint is one of that RotatingSecret's decoys, from the Secret's annotation
  ``keyrotor.io/retired-fingerprints`` (never from values: nothing here reads material), and
  answers 404 otherwise: a report cannot make keyrotor post events about arbitrary objects;
* rate-limits reports per source address (a token bucket: 20, then one a second; 429);
* then calls ``on_decoy(report)``; the operator's posts a Warning event ``DecoyPresented`` on
  the RotatingSecret (one per decoy, identity and minute, by a deterministic name), records an
  audit entry, and counts ``keyrotor_decoy_presentations_total{namespace,name}``.

Trade-offs, stated plainly:

* **Unauthenticated**: any pod that can reach the Service can report. It can only make the
  operator say that one of the *real* decoy fingerprints was presented, and knowing a decoy's
  fingerprint requires the Secret (fingerprint.key) or its annotations, so a false alarm needs
  read access to the Secret, which is itself an incident. Restrict the port with a
  NetworkPolicy to the namespaces that run acceptors. The identity is the acceptor's word:
  treat it as a lead, not as proof.
* **Best effort**: the chart's Service spreads reports over every operator pod; a standby
  hands each on to the leader (once: a handed-on report is never handed on again), so the
  leader records every report while both run. If no leader runs for longer than the
  retries (about 15 s), the report is lost. The consumer's own metric
  ``keyrotor_client_decoy_presentations_total`` and its alert ``KeyrotorDecoyPresented`` do
  not depend on the operator and stay the primary alarm.
* **Fail-closed audit**: when the audit log cannot be written the answer is 503 (the library
  retries) and no event is posted, as for every other audited action.
* A decoy tells you the Secret leaked, not how. The answer is ``keyrotor revoke-now``, which
  also replaces the decoys (the thief knows the old ones).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from prometheus_client import Counter

from keyrotor import metrics
from keyrotor.client import RateLimit, RateLimiter
from keyrotor.errors import KeyrotorError
from keyrotor.kube import KubeApi
from keyrotor.publishing.secret import Owner, decoy_fingerprints

log = logging.getLogger("keyrotor.decoys")
REPORT_PATH = "/v1/decoy-reports"
EVENT_REASON = "DecoyPresented"
AUDIT_ACTION = "decoy.presented"
FINGERPRINT = re.compile(r"^hmac-sha256:[0-9a-f]{16}$")
NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
MAX_BODY = 4096
SOURCE_LIMIT = RateLimit(burst=20, per_second=1.0, block_time=60.0, max_identities=4096)
# Set on a report a standby hands on, naming the source it came from: never handed on again.
FORWARDED = "X-Keyrotor-Forwarded-For"
FORWARD_TIMEOUT = 3.0

PRESENTATIONS = Counter(
    "keyrotor_decoy_presentations_total",
    "Decoy presentations reported by consumers and confirmed as this RotatingSecret's decoys",
    metrics.LABELS, registry=metrics.REGISTRY)
REFUSED = Counter(
    "keyrotor_decoy_reports_refused_total",
    "Decoy reports refused, by reason (invalid, unknown, not_a_decoy, rate_limited, standby)",
    ("reason",), registry=metrics.REGISTRY)
FORWARDS = Counter(
    "keyrotor_decoy_reports_forwarded_total",
    "Decoy reports a standby handed on to the leader, by the leader's HTTP answer",
    ("code",), registry=metrics.REGISTRY)


class Audit(Protocol):
    """The audit trail as the reconciler uses it (raises AuditUnavailable when no sink took
    the line). Blocking."""

    def record(self, *, action: str, actor: str, namespace: str, name: str, uid: str = "",
               versions: Mapping[str, int] | None = None,
               fingerprints: Mapping[str, str] | None = None,
               detail: Mapping[str, Any] | None = None, key: str | None = None) -> None: ...


@dataclass(frozen=True)
class DecoyReport:
    """One confirmed presentation of a decoy. No material: a fingerprint and who said so."""

    namespace: str
    name: str  # the RotatingSecret
    fingerprint: str
    identity: str  # the client the acceptor saw (IP, user, API-key id), as it reported it
    source: str  # the address the report came from (the acceptor)
    rotating_secret: dict[str, Any]


def _clean(text: Any, limit: int = 256) -> str:
    """A printable, bounded rendering of a client-supplied string for events and logs."""
    return "".join(c if c.isprintable() else "?" for c in str(text or ""))[:limit]


class DecoyReports:
    """The report endpoint. ``api`` is set once the operator may act (leader or single);
    until then, and without it, every report gets 503."""

    def __init__(self, *, api: KubeApi | None = None, namespaces: Sequence[str] = (),
                 on_decoy: Callable[[DecoyReport], None] | None = None,
                 active: Callable[[], bool] = lambda: True, audit: Audit | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 leader_url: Callable[[], str | None] | None = None) -> None:
        self.api = api
        # On a standby: where the leader answers (blocking: it reads the Lease), or None.
        self.leader_url = leader_url
        self.namespaces = tuple(namespaces)
        self.on_decoy = on_decoy or self.alarm
        self.active = active
        # The audit trail (keyrotor.audit.AuditLog, the reconciler's Audit protocol): each
        # confirmed report is recorded (action decoy.presented) before the event is posted.
        # HOOK: the runner passes it to start() once the operator builds one.
        self.audit: Audit | None = audit
        self.limiter = RateLimiter(SOURCE_LIMIT, clock, label="decoy reports")

    def start(self, api: KubeApi, namespaces: Sequence[str] = (),
              audit: Audit | None = None) -> None:
        """Begin answering reports (the operator is leader, or runs without election)."""
        self.namespaces = tuple(namespaces)
        self.audit = audit if audit is not None else self.audit
        self.api = api

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(REPORT_PATH, self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        api = self.api
        # The limit keys on the address the report came from: for a handed-on report that is
        # the standby's (the header is anyone's word), which limited each source itself.
        remote = request.remote or "unknown"
        forwarded = request.headers.get(FORWARDED)
        source = _clean(f"{forwarded} via {remote}") if forwarded else remote
        if (api is None or not self.active()) and (forwarded or self.leader_url is None):
            REFUSED.labels("standby").inc()
            return _answer(503, "standby: not the leader, retry")
        if self.limiter.attempt(remote, failed=True):
            REFUSED.labels("rate_limited").inc()
            return _answer(429, "too many reports from this source")
        if (request.content_length or 0) > MAX_BODY:
            REFUSED.labels("invalid").inc()
            return _answer(413, "report too large")
        raw = await request.content.read(MAX_BODY + 1)
        if api is None or not self.active():
            return await self._hand_on(raw, remote)
        try:
            doc = json.loads(raw)
            namespace, name = str(doc["namespace"]), str(doc["name"])
            fingerprint, identity = str(doc["fingerprint"]), _clean(doc.get("identity"))
        except (ValueError, KeyError, TypeError):
            REFUSED.labels("invalid").inc()
            return _answer(400, "expected JSON {namespace, name, fingerprint, identity}")
        if not (NAME.match(namespace) and NAME.match(name) and FINGERPRINT.match(fingerprint)):
            REFUSED.labels("invalid").inc()
            return _answer(400, "namespace, name or fingerprint malformed")
        if self.namespaces and namespace not in self.namespaces:
            REFUSED.labels("unknown").inc()
            return _answer(404, f"namespace {namespace} is not watched by this operator")
        try:
            found = await asyncio.to_thread(self._decoy_owner, api, namespace, name,
                                            fingerprint)
        except KeyrotorError as exc:
            return _answer(503, f"cannot check the report now: {exc.reason}")
        if found is None:
            REFUSED.labels("unknown").inc()
            return _answer(404, f"no RotatingSecret {namespace}/{name}")
        if not found[1]:
            REFUSED.labels("not_a_decoy").inc()
            return _answer(404, f"{fingerprint} is not a decoy of RotatingSecret "
                                f"{namespace}/{name}")
        rotating_secret = found[0]
        report = DecoyReport(namespace=namespace, name=rotating_secret["metadata"]["name"],
                             fingerprint=fingerprint, identity=identity, source=source,
                             rotating_secret=rotating_secret)
        try:
            await asyncio.to_thread(self.on_decoy, report)
        except KeyrotorError as exc:  # audit unavailable, API away: the library retries
            log.error("decoy report for %s/%s not recorded: %s", namespace, report.name, exc)
            return _answer(503, f"not recorded: {exc.reason}")
        return _answer(202, "recorded")

    async def _hand_on(self, raw: bytes, source: str) -> web.Response:
        """A standby's part: pass the report to the leader, and its answer back."""
        assert self.leader_url is not None
        try:
            url = await asyncio.to_thread(self.leader_url)
        except KeyrotorError as exc:
            url = None
            log.warning("decoy report: cannot read the leader's address: %s", exc.reason)
        if url:
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
                        total=FORWARD_TIMEOUT)) as session, session.post(
                        url.rstrip("/") + REPORT_PATH, data=raw, headers={
                            "Content-Type": "application/json", FORWARDED: source}) as answer:
                    FORWARDS.labels(str(answer.status)).inc()
                    return web.Response(status=answer.status, body=await answer.read(),
                                        content_type=answer.content_type)
            except (TimeoutError, aiohttp.ClientError) as exc:
                log.warning("decoy report: the leader at %s did not answer: %s", url, exc)
        REFUSED.labels("standby").inc()
        return _answer(503, "standby: the leader could not be reached, retry")

    @staticmethod
    def _decoy_owner(api: KubeApi, namespace: str, name: str,
                     fingerprint: str) -> tuple[dict[str, Any], bool] | None:
        """(the RotatingSecret, whether ``fingerprint`` is one of its decoys), or None when
        no RotatingSecret is called ``name`` or publishes a Secret called ``name``."""
        body = api.get_rotating_secret(namespace, name)
        if body is None:
            body = next((rs for rs in api.list_rotating_secrets(namespace)
                         if (rs.get("spec") or {}).get("secretName") == name), None)
        if body is None:
            return None
        meta, spec = body["metadata"], body.get("spec") or {}
        secret = api.get_secret(namespace, spec.get("secretName") or "")
        owner = Owner(name=meta["name"], namespace=namespace, uid=meta.get("uid", ""))
        mine = secret is not None and owner.owns(secret)
        return body, mine and fingerprint in decoy_fingerprints(secret)

    def alarm(self, report: DecoyReport) -> None:
        """The operator's answer to a confirmed report: audit entry, Warning event, metric.
        Blocking."""
        api = self.api
        if api is None:
            raise RuntimeError("alarm before start")
        # One audit line and one event per decoy, identity and minute (a thief spraying it
        # makes one a minute; the library's retry of a report finds them there).
        bucket = int(time.time() // 60)
        digest = hashlib.sha256(f"{report.fingerprint}|{report.identity}|{bucket}".encode())
        uid = report.rotating_secret["metadata"].get("uid", "")
        if self.audit is not None:  # first: fail-closed, no event without its audit line
            self.audit.record(action=AUDIT_ACTION, actor=f"presenter:{report.identity or '?'}",
                              namespace=report.namespace, name=report.name, uid=uid,
                              fingerprints={"decoy": report.fingerprint},
                              detail={"identity": report.identity, "reporter": report.source},
                              key=f"{uid}/{AUDIT_ACTION}/{digest.hexdigest()[:16]}")
        PRESENTATIONS.labels(report.namespace, report.name).inc()
        who = report.identity or "an unknown client"
        log.warning("decoy %s of RotatingSecret %s/%s presented by %s (reported by %s)",
                    report.fingerprint, report.namespace, report.name, who, report.source)
        api.post_event(
            report.rotating_secret, type="Warning", reason=EVENT_REASON,
            name=f"{report.name}.decoy-{digest.hexdigest()[:16]}",
            message=f"decoy {report.fingerprint} was presented by {who} (reported by "
                    f"{report.source}): no legitimate client holds it, so the Secret has "
                    f"leaked. Revoke now: keyrotor revoke-now {report.name} -n "
                    f"{report.namespace}")


def _answer(status: int, message: str) -> web.Response:
    return web.json_response({"status": status, "message": message}, status=status)
