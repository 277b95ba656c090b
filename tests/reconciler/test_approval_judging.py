"""The reconciler's side of emergency revocation, in-process: what ``status.emergency`` shows
while a request is open (required approvals, who approved, expiry), and when approvals are
judged at all. A stand-in judge (the :class:`keyrotor.reconciler.ApprovalJudge` protocol)
hands out verdicts and records how it was asked; the real judge against a real API server is
tests/security/test_approvals.py, the whole flow tests/security/test_emergency_operator.py."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from keyrotor import status as status_io
from keyrotor.reconciler import REQUEST_ANNOTATION, Reconciler
from tests.reconciler.fakeapi import NS, FakeApi
from tests.reconciler.test_reconciler import Clock, Prober, idle_at, run

SPEC = {"rotation": {"every": "720h"}, "generator": {"random": {"length": 32}}}


@dataclass(frozen=True)
class Verdict:
    """What the judge hands back of one judged RotationApproval (never a code)."""

    approver: str
    ok: bool
    reason: str
    message: str


@dataclass
class Judge:
    queued: list[Verdict] = field(default_factory=list)
    calls: list[tuple[str | None, str | None]] = field(default_factory=list)

    def judge(self, namespace: str, rotating_secret: str, request: str | None, *,
              ended: str | None = None) -> list[Verdict]:
        self.calls.append((request, ended))
        judged, self.queued = self.queued, []
        return judged


@dataclass
class AuditLines:
    lines: list[dict[str, Any]] = field(default_factory=list)

    def record(self, **line: Any) -> None:
        self.lines.append(line)

    def rejected(self) -> list[tuple[str, str]]:
        return [(line["actor"], line["detail"]["reason"]) for line in self.lines
                if line["action"] == "approval.rejected"]


async def issued(spec: dict[str, Any]) -> tuple[FakeApi, Clock, Judge, AuditLines, Reconciler]:
    api, clock, judge, audit = FakeApi(), Clock(), Judge(), AuditLines()
    api.add("k", spec)
    r = Reconciler(api=api, clock=clock, prober=Prober(), approvals=judge, audit=audit)
    await run(r, clock, "k", idle_at(1))
    return api, clock, judge, audit, r


def emergency(api: FakeApi) -> dict[str, Any]:
    return {k: v for k, v in (api.status("k").get("emergency") or {}).items() if v is not None}


def warnings(api: FakeApi) -> list[str]:
    return [e["message"] for e in api.events.values()
            if (e["type"], e["reason"]) == ("Warning", "ApprovalRejected")]


async def test_an_open_request_shows_required_approved_and_expiry() -> None:
    api, clock, judge, _, r = await issued(
        {**SPEC, "emergency": {"approvals": 2, "requestTTL": "10m"}})
    clock.advance(60)
    api.edit("k", **{REQUEST_ANNOTATION: "r1"})
    judge.queued = [Verdict("alice", True, "Accepted", "code of alice accepted")]
    started = clock.now
    delay = await r.reconcile(NS, "k")
    expiry = started + datetime.timedelta(minutes=10)
    assert emergency(api) == {"request": "r1", "approvedBy": ["alice"], "required": 2,
                              "startTime": status_io.ts(started),
                              "expiryTime": status_io.ts(expiry)}
    assert api.status("k")["phase"] == "Idle"

    # Nothing new: nothing written (the approval's write showed the next rotation time as
    # an ordinary reconcile shows it, so there is nothing to put back); it comes back by the
    # expiry at the latest.
    assert api.status("k")["nextRotationTime"]
    clock.advance(1)
    writes = api.writes["patch rotatingsecrets/status"]
    delay = await r.reconcile(NS, "k")
    assert api.writes["patch rotatingsecrets/status"] == writes
    assert 0 < delay <= (expiry - clock.now).total_seconds()

    # The state round-trips: a restarted operator reads the same request back.
    assert status_io.from_status(api.status("k")).emergency_expiry == expiry

    # An approval judged at the expiry no longer counts: the request expires.
    clock.now = expiry
    judge.queued = [Verdict("bob", True, "Accepted", "code of bob accepted")]
    await r.reconcile(NS, "k")
    assert emergency(api)["lastResult"] == "Expired"
    assert emergency(api)["approvedBy"] == ["alice"]
    assert api.status("k")["currentVersion"] == 1
    assert "approval by bob came after request r1 ended" in warnings(api), warnings(api)


async def test_approvals_of_no_open_request_are_judged_when_they_arrive() -> None:
    api, clock, judge, audit, r = await issued(
        {**SPEC, "emergency": {"approvals": 1, "requestTTL": "1m"}})
    # Nothing arrived, no request: a reconcile lists no approvals (no request per object).
    clock.advance(5)
    await r.reconcile(NS, "k")
    assert judge.calls == []

    # One arrives (the operator's watch of RotationApprovals sets the flag): judged at once
    # as NoRequest, a Warning and an audit line; the status is not rewritten for it.
    writes = api.writes["patch rotatingsecrets/status"]
    r.approvals_waiting = True
    judge.queued = [Verdict("bob", False, "NoRequest",
                            "no emergency revocation request is open for k")]
    await r.reconcile(NS, "k")
    assert judge.calls == [(None, None)]
    assert not r.approvals_waiting
    assert warnings(api) == ["approval by bob rejected (NoRequest): no emergency revocation "
                             "request is open for k"]
    assert audit.rejected() == [("approver:bob", "NoRequest")]
    assert api.writes["patch rotatingsecrets/status"] == writes
    assert "emergency" not in api.status("k")

    # A request that expired: its late approvals are judged as such (ended="Expired").
    api.edit("k", **{REQUEST_ANNOTATION: "r1"})
    await r.reconcile(NS, "k")
    clock.advance(61)
    await r.reconcile(NS, "k")
    assert emergency(api)["lastResult"] == "Expired"
    calls = len(judge.calls)
    await r.reconcile(NS, "k")
    assert len(judge.calls) == calls  # ended, nothing arrived: no listing
    r.approvals_waiting = True
    judge.queued = [Verdict("bob", False, "RequestEnded", "request 'r1' expired")]
    await r.reconcile(NS, "k")
    assert judge.calls[-1] == ("r1", "Expired")
    assert audit.rejected()[-1] == ("approver:bob", "RequestEnded")
    assert warnings(api)[-1] == "approval by bob rejected (RequestEnded): request 'r1' expired"


async def test_approvals_arriving_in_emergency_revoking_wait_for_its_end() -> None:
    api, _, judge, _, r = await issued(
        {**SPEC, "emergency": {"approvals": 1, "requestTTL": "10m"}})
    api.edit("k", **{REQUEST_ANNOTATION: "r1"})
    judge.queued = [Verdict("alice", True, "Accepted", "code of alice accepted")]
    assert await r.reconcile(NS, "k") == 0.0
    assert api.status("k")["phase"] == "EmergencyRevoking"

    r.approvals_waiting = True  # one arrived meanwhile: not judged mid-revocation
    calls = len(judge.calls)
    delay = await r.reconcile(NS, "k")
    assert len(judge.calls) == calls and r.approvals_waiting
    assert api.status("k")["currentVersion"] == 2 and delay <= 1.0  # soon, not in an hour
    judge.queued = [Verdict("carol", False, "RequestEnded",
                            "request 'r1' already ended (Approved)")]
    await r.reconcile(NS, "k")
    assert judge.calls[-1] == ("r1", "Approved") and not r.approvals_waiting
