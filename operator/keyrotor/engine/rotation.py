"""The rotation engine: one pure function from (spec, state, time, observations) to the next step.

This is where every decision of a rotation is made, and the only place: "rotate now?",
"present the new version?", "revoke the old one?" and "hold?" are all answered here, with the
policy chains of :mod:`keyrotor.engine.policies`. The engine does no I/O and reads no clock.

A reconcile loop around it does three things, in this order, every time it wakes:

1. if :func:`probe_due` names a version, probe the consumers with it;
2. call :func:`step` with the probe round (if any) and the manual trigger;
3. carry out ``step.effect`` (idempotent, keyed by version), then persist ``step.state`` to the
   resource's status, then post ``step.events``; sleep ``step.requeue_after`` at most.

Crash safety follows from that order. A version number is allocated and persisted (phase
Generating) before any material exists, so a crash never hands out a number twice; each effect
is replayed harmlessly when the process dies after doing it but before persisting the state that
follows it.

The phases (DESIGN.md):

* TwoKeys: Idle -> Generating -> [Stage] VerifyingAcceptance -> Promoting -> [Promote]
  VerifyingRetirement -> Revoking -> [Revoke] Idle.
* OneKey: Idle -> Generating -> [Promote, generating the version] VerifyingRetirement ->
  Revoking -> [Revoke] Idle. With a target: Promote -> Activating (``activateAfter``, so
  every presenter holds the new version) -> [Activate] VerifyingRetirement.
* The very first version: Idle -> Generating -> [Issue] Idle.
* Holding: a verifying phase whose consumers still fail past ``maxOverlap``. Probing goes on;
  nothing is revoked; it leaves Holding when the consumers recover.
* Emergency revocation (a suspected leak, ``keyrotor revoke-now``): :func:`approve` counts the
  judged TOTP approvals of a request; once ``spec.emergency.approvals`` different approvers
  agree, any phase -> EmergencyRevoking (the new version allocated and persisted) ->
  [EmergencyRevoke] Idle: the new version is the only one in the Secret and every older one is
  revoked at once. This is the one exception to invariant 2, and the only way to take it.
"""

from __future__ import annotations

import datetime

from keyrotor.engine import policies
from keyrotor.engine.durations import format_duration
from keyrotor.engine.model import (
    Activate,
    Approval,
    ConsumerResult,
    EmergencyRevoke,
    Event,
    Issue,
    Phase,
    ProbeRound,
    PromoteTo,
    Republish,
    Revoke,
    RotationSpec,
    RotationState,
    Stage,
    Step,
    Strategy,
)
from keyrotor.engine.schedule import next_rotation_time

IDLE_RESYNC = 3600.0  # wake at least hourly when idle, to notice clock or schedule drift
VERIFYING = (Phase.VERIFYING_ACCEPTANCE, Phase.VERIFYING_RETIREMENT, Phase.HOLDING)
# Phases whose Secret must hold exactly :func:`published`: no effect is half carried out.
SETTLED = (Phase.IDLE, Phase.FAILED, Phase.ACTIVATING, *VERIFYING)
DRIFT_SETTLE = 5.0  # after a repair, look again soon: Degraded clears once the Secret holds


def published(state: RotationState) -> dict[str, int]:
    """What the Secret holds (slot -> version) when ``state`` is persisted. In Generating and
    Staging the allocated ``next`` is not published yet."""
    unpublished = (Phase.GENERATING, Phase.STAGING, Phase.EMERGENCY)
    held = {"current": state.current, "previous": state.previous,
            "next": None if state.phase in unpublished else state.next}
    return {slot: version for slot, version in held.items() if version is not None}


def drifted(state: RotationState, held: dict[str, int]) -> bool:
    """Whether a Secret holding intact ``held`` (slot -> version) has drifted from ``state``.

    A Secret ahead of its status is a step that a kill interrupted before the status write (a
    version allocated and staged, a promotion, a revocation): the replay finishes it, so that
    is no drift. Drift is what no replay explains: no intact current, a version the status
    needs (current, a staged next) gone, or a version the status never allocated."""
    kept = set(held.values())
    allowed = {state.current, state.next, state.previous, state.latest, state.latest + 1}
    return "current" not in held or bool(kept - allowed) or any(
        v not in kept for slot, v in published(state).items() if slot != "previous")


def repair(state: RotationState, *, now: datetime.datetime, held: dict[str, int],
           recoverable: bool, found: str) -> Step:
    """The Secret drifted from ``state``: it holds intact only ``held`` (slot -> version;
    nothing when it was deleted). ``recoverable``: the generator can hand back an existing
    version (it lives in a backend). ``found`` says what was seen, for the Warning.

    What can be re-published is; a lost ``current`` that cannot be recovered is replaced by a
    new version (the latest number plus one: strictly increasing, never reused) and the
    rotation in progress, if any, ends there; a lost staged ``next`` is staged anew under a
    new number and verified from the start; a lost ``previous`` is dropped (the old version
    is gone from the Secret already). The step's state is the repaired one; its single
    Warning event (reason SecretDrift) says what was found and what was done.
    """
    want = published(state)
    kept = set(held.values())
    lost = {slot: v for slot, v in want.items() if v not in kept}
    if state.current is None:  # nothing issued yet: the first Issue writes the Secret
        return Step(state, requeue_after=0.0)
    top = max((state.latest, *kept))
    if recoverable or not lost:
        effect = Republish(current=state.current, next=want.get("next"),
                           previous=want.get("previous"))
        slots = ", ".join(f"{slot} {v}" for slot, v in want.items())
        done = (f"re-published versions ({slots}) from the backend" if lost
                else f"re-published versions ({slots})")
        repaired = state
    elif "current" in lost:
        version = top + 1
        effect = Republish(current=version, fresh=version)
        done = (f"issued version {version} as current (the generator cannot recover version "
                f"{state.current})" + (f"; the rotation in phase {state.phase} ends here"
                                       if state.rotating else ""))
        repaired = state.evolve(
            phase=Phase.IDLE, current=version, next=None, previous=None, latest=version,
            current_version_time=now, phase_start_time=now, rotation_start_time=None,
            successful_rounds=0, last_probe_time=None, verified_time=None, consumers=(),
            message=f"version {version} issued: the Secret had drifted")
    elif "next" in lost:
        version = top + 1
        effect = Republish(current=state.current, next=version, fresh=version)
        done = (f"staged version {version} as next instead (the generator cannot recover "
                f"version {state.next}); verifying acceptance from the start")
        repaired = state.evolve(
            phase=Phase.VERIFYING_ACCEPTANCE, next=version, latest=version,
            phase_start_time=now, successful_rounds=0, last_probe_time=None,
            verified_time=None, consumers=(),
            message=f"version {version} staged as next after the Secret drifted")
    else:
        effect = Republish(current=state.current, next=want.get("next"))
        done = f"dropped previous version {state.previous} (the generator cannot recover it)"
        repaired = state.evolve(previous=None)
    message = f"{found}; {done}"
    return Step(repaired, effect=effect, events=(Event("Warning", "SecretDrift", message),),
                requeue_after=DRIFT_SETTLE)


def probe_due(spec: RotationSpec, state: RotationState, now: datetime.datetime) -> int | None:
    """The version the consumers should be probed with now, or None."""
    if state.phase not in (*VERIFYING, Phase.ACTIVATING) or not spec.expected(state.stage):
        return None
    last = state.last_probe_time
    if last is not None and (now - last).total_seconds() < spec.interval:
        return None
    return state.next if state.next is not None else state.current


def step(spec: RotationSpec, state: RotationState, *, now: datetime.datetime,
         trigger: str | None = None, probe: ProbeRound | None = None,
         held: dict[str, int] | None = None) -> Step:
    """Decide what happens next. See the module docstring for how to carry it out.

    ``held`` is what the Secret holds now (slot -> version); the reconcile loop reads it in
    Promoting and Revoking, where the effect may already have been carried out by a process
    that died before persisting the next state: then the step is finished, not reconsidered.
    """
    if state.phase == Phase.IDLE or state.phase == Phase.FAILED:
        return _idle(spec, state, now, trigger)
    if state.phase == Phase.EMERGENCY:
        return _emergency(state, now)
    if state.phase in (Phase.GENERATING, Phase.STAGING):
        return _generate(spec, state, now)
    if state.phase == Phase.ACTIVATING:
        return _activate(spec, state, now, probe)
    if state.phase == Phase.PROMOTING:
        if held is not None and held.get("current") == state.next:
            return _promote(state, now)  # already presented: too late to go back
        return (_reconsider(spec, state, now, Phase.VERIFYING_ACCEPTANCE)
                or _promote(state, now))
    if state.phase == Phase.REVOKING:
        if held is not None and state.previous is not None and \
                held.get("previous") != state.previous:
            return _revoke(spec, state, now)  # already out of the Secret: finish revoking
        return (_reconsider(spec, state, now, Phase.VERIFYING_RETIREMENT)
                or _revoke(spec, state, now))
    return _verify(spec, state, now, probe)


def _idle(spec: RotationSpec, state: RotationState, now: datetime.datetime,
          trigger: str | None) -> Step:
    verdict = policies.decide(policies.SHOULD_ROTATE,
                              policies.Facts(spec=spec, state=state, now=now, trigger=trigger))
    if not verdict.go:
        due = next_rotation_time(every=spec.every, schedule=spec.schedule,
                                 since=state.current_version_time)
        wait = IDLE_RESYNC if due is None or spec.suspend else (due - now).total_seconds()
        return Step(state.evolve(phase=Phase.IDLE, message=verdict.message),
                    requeue_after=max(0.0, min(wait, IDLE_RESYNC)))
    version = state.latest + 1
    started = state.evolve(
        phase=Phase.GENERATING, next=version, latest=version, rotation_start_time=now,
        phase_start_time=now, successful_rounds=0, last_probe_time=None, verified_time=None,
        last_trigger=trigger if verdict.reason == "ManualTrigger" else state.last_trigger,
        message=f"generating version {version}: {verdict.message}",
    )
    if state.current is None:
        # The first version: its Issued event says it all (one event per new object, not two:
        # at 10,000 objects that is 10,000 requests fewer).
        return Step(started)
    return Step(started, events=(Event("Normal", "RotationStarted",
                                       f"rotation started ({verdict.reason}): version {version}"),))


def approve(spec: RotationSpec, state: RotationState, *, now: datetime.datetime,
            request: str, judged: tuple[Approval, ...] = ()) -> Step:
    """Count the judged approvals of emergency revocation ``request``.

    A new request id starts afresh (the approvals of an earlier one do not carry over). Each
    different approver whose code was accepted counts once; rejected codes become Warning
    events (a locked-out approver its own). A request that gathers ``approvals_required``
    before ``request_ttl`` runs out allocates the new version and enters EmergencyRevoking
    (persisted before anything is revoked); one that does not expires, and an approval judged
    at or after its expiry no longer counts. While it is open the state carries what a reader
    needs: the approvals required and the expiry time (both from the spec as it is now).
    """
    if state.emergency_request != request:
        state = state.evolve(emergency_request=request, approved_by=(), emergency_start=now,
                             emergency_result=None, revoking=(), emergency_required=None,
                             emergency_expiry=None)
    open_ = state.emergency_result is None and state.phase != Phase.EMERGENCY
    left = 0.0
    if open_:
        assert state.emergency_start is not None
        expiry = state.emergency_start + datetime.timedelta(seconds=spec.request_ttl)
        state = state.evolve(emergency_required=spec.approvals_required,
                             emergency_expiry=expiry)
        left = (expiry - now).total_seconds()
    counting = open_ and left > 0
    events: list[Event] = []
    approved = list(state.approved_by)
    for a in judged:
        if not a.ok:
            events.append(rejection(a))
        elif not counting:
            events.append(Event("Warning", "ApprovalRejected", f"approval by {a.approver} "
                                f"came after request {request} ended"))
        elif a.approver in approved:
            events.append(Event("Warning", "ApprovalRejected", (
                f"{a.approver} already approved request {request}: a different approver "
                "must approve")))
        else:
            approved.append(a.approver)
            events.append(Event("Normal", "ApprovalAccepted", (
                f"{a.approver} approved the emergency revocation ({len(approved)} of "
                f"{spec.approvals_required})")))
    state = state.evolve(approved_by=tuple(approved))
    if not open_:
        return Step(state, events=tuple(events))
    if state.current is None:
        return Step(state.evolve(emergency_result="Rejected",
                                 message="emergency revocation refused: no version issued yet"),
                    events=(*events, Event("Warning", "EmergencyRejected",
                                           "no version has been issued yet: nothing to revoke")))
    if left <= 0:
        return Step(state.evolve(emergency_result="Expired"), events=(*events, Event(
            "Warning", "EmergencyExpired", (
                f"emergency revocation request {request} expired with {len(approved)} of "
                f"{spec.approvals_required} approvals"))))
    if len(approved) >= spec.approvals_required:
        version = state.latest + 1
        old = tuple(sorted({v for v in (state.current, state.previous, state.next)
                            if v is not None}))
        by = ", ".join(approved)
        started = state.evolve(
            phase=Phase.EMERGENCY, next=version, latest=version, revoking=old,
            rotation_start_time=now, phase_start_time=now, successful_rounds=0,
            last_probe_time=None, verified_time=None, consumers=(),
            last_trigger=f"emergency:{request}",
            message=f"emergency revocation approved by {by}: version {version} replaces "
                    f"versions {', '.join(map(str, old))} at once")
        return Step(started, events=(*events, Event("Warning", "EmergencyApproved", (
            f"emergency revocation approved by {by}: versions {', '.join(map(str, old))} "
            f"are revoked now; presenters still on them fail"))))
    return Step(state, events=tuple(events), requeue_after=left)


def rejection(approval: Approval) -> Event:
    """The Warning of an approval that does not count: a code refused by the judge, or an
    approval that names no open request (judged without its code being checked)."""
    return Event("Warning", approval.event_reason, f"approval by {approval.approver} "
                 f"rejected ({approval.reason}): {approval.message}")


def _emergency(state: RotationState, now: datetime.datetime) -> Step:
    version = state.next
    assert version is not None, "EmergencyRevoking always has an allocated version"
    old = ", ".join(map(str, state.revoking)) or "none"
    by = ", ".join(state.approved_by)
    done = state.evolve(
        phase=Phase.IDLE, current=version, previous=None, next=None, current_version_time=now,
        last_rotation_time=now, rotation_count=state.rotation_count + 1,
        rotation_start_time=None, phase_start_time=now, successful_rounds=0,
        last_probe_time=None, verified_time=None, consumers=(), emergency_result="Approved",
        revoking=(), last_result="EmergencyRevoked",
        message=f"version {version} is current; versions {old} revoked in an emergency "
                f"approved by {by}")
    return Step(done, effect=EmergencyRevoke(version, revoke=state.revoking), events=(Event(
        "Warning", "EmergencyRevoked", f"version {version} is the only version now; versions "
        f"{old} revoked, approved by {by}"),))


def _generate(spec: RotationSpec, state: RotationState, now: datetime.datetime) -> Step:
    version = state.next
    assert version is not None, "Generating always has an allocated version"
    if state.current is None:
        issued = state.evolve(
            phase=Phase.IDLE, current=version, next=None, current_version_time=now,
            phase_start_time=now, rotation_start_time=None, last_result="Succeeded",
            message=f"version {version} issued",
        )
        return Step(issued, effect=Issue(version),
                    events=(Event("Normal", "Issued", f"version {version} issued as current"),))
    if spec.strategy == Strategy.ONE_KEY:
        promoted = _promoted(state, version, now)
        if spec.activate_after is not None:
            promoted = promoted.evolve(
                phase=Phase.ACTIVATING,
                message=f"version {version} is current; the target swaps to it after "
                        f"{format_duration(spec.activate_after)}")
        return Step(promoted, effect=PromoteTo(version, generate=True), events=(Event(
            "Normal", "Promoted", f"version {version} is current; version {state.current} "
            "stays as previous for the fallback"),), requeue_after=spec.activate_after or 0.0)
    staged = state.evolve(
        phase=Phase.VERIFYING_ACCEPTANCE, phase_start_time=now, successful_rounds=0,
        last_probe_time=None, verified_time=None, consumers=(),
        message=f"version {version} staged as next; verifying that every acceptor accepts it",
    )
    return Step(staged, effect=Stage(version), events=(Event(
        "Normal", "Staged", f"version {version} staged as next; verifying acceptance"),))


def _promoted(state: RotationState, version: int, now: datetime.datetime) -> RotationState:
    return state.evolve(
        phase=Phase.VERIFYING_RETIREMENT, current=version, previous=state.current, next=None,
        current_version_time=now, phase_start_time=now, successful_rounds=0,
        last_probe_time=None, verified_time=None, consumers=(),
        message=f"version {version} is current; verifying that version {state.current} "
                "is retired",
    )


def _activate(spec: RotationSpec, state: RotationState, now: datetime.datetime,
              probe: ProbeRound | None) -> Step:
    version = state.current
    assert version is not None, "Activating always follows a promotion"
    recorded = _record(spec, state, probe, now) if probe is not None else state
    recorded = _against_spec(spec, recorded, now)
    verdict = policies.decide(policies.MAY_ACTIVATE,
                              policies.Facts(spec=spec, state=recorded, now=now))
    if not verdict.go:
        # No Holding here: until the swap the old key works at the target, nothing is at risk.
        waiting = recorded.evolve(message=verdict.message)
        return Step(waiting, requeue_after=_next_wake(spec, waiting, now))
    active = state.evolve(
        phase=Phase.VERIFYING_RETIREMENT, phase_start_time=now, successful_rounds=0,
        last_probe_time=None, verified_time=None, consumers=(),
        message=f"the target accepts version {version} only; verifying that its failures "
                "reach zero")
    return Step(active, effect=Activate(version), events=(Event(
        "Normal", "Activated", f"the target swapped to version {version}"),))


def _promote(state: RotationState, now: datetime.datetime) -> Step:
    version = state.next
    assert version is not None, "Promoting always has a staged version"
    return Step(_promoted(state, version, now), effect=PromoteTo(version), events=(Event(
        "Normal", "Promoted", f"version {version} is current; version {state.current} "
        "is kept as previous during the overlap"),))


def _revoke(spec: RotationSpec, state: RotationState, now: datetime.datetime) -> Step:
    old = state.previous
    took = ""
    if state.rotation_start_time is not None:
        took = f" in {format_duration((now - state.rotation_start_time).total_seconds())}"
    done = state.evolve(
        phase=Phase.IDLE, previous=None, rotation_count=state.rotation_count + 1,
        last_rotation_time=now, rotation_start_time=None, phase_start_time=now,
        successful_rounds=0, verified_time=None, last_result="Succeeded",
        message=f"version {state.current} is current; version {old} revoked",
    )
    events = (Event("Normal", "Revoked", f"version {old} revoked; rotation to version "
                    f"{state.current} completed{took}"),)
    return Step(done, effect=Revoke(old) if old is not None else None, events=events)


def _record(spec: RotationSpec, state: RotationState, probe: ProbeRound,
            now: datetime.datetime) -> RotationState:
    before = {c.name: c for c in state.consumers}
    results = tuple(
        ConsumerResult(
            name=r.name, ok=r.ok, message=r.message, version=probe.version, time=now,
            pending=r.pending and not r.ok,
            consecutive_failures=0 if r.ok else
            (before[r.name].consecutive_failures if r.name in before else 0) + 1,
        )
        for r in probe.results
    )
    rounds = state.successful_rounds + 1 if probe.ok else 0
    verified = state.verified_time
    if not probe.ok:
        verified = None
    elif rounds >= spec.successes_required and verified is None:
        verified = now
    return state.evolve(consumers=results, successful_rounds=rounds, last_probe_time=now,
                        verified_time=verified)


def _against_spec(spec: RotationSpec, state: RotationState,
                  now: datetime.datetime) -> RotationState:
    """Probe results count only for the consumers the spec lists now: results of consumers
    that left are dropped, and a consumer that joined voids the rounds counted without it."""
    names = spec.expected(state.stage)
    kept = tuple(c for c in state.consumers if c.name in names)
    state = state.evolve(consumers=kept)
    if not names:
        return state if state.verified_time else state.evolve(verified_time=now)
    if {c.name for c in kept} != set(names):
        return state.evolve(successful_rounds=0, verified_time=None)
    return state


def _may_proceed(spec: RotationSpec, state: RotationState,
                 now: datetime.datetime) -> policies.Verdict:
    chain = policies.MAY_PROMOTE if state.next is not None else policies.MAY_REVOKE
    return policies.decide(chain, policies.Facts(spec=spec, state=state, now=now))


def _reconsider(spec: RotationSpec, state: RotationState, now: datetime.datetime,
                back_to: Phase) -> Step | None:
    """Promoting and Revoking re-ask their question: the spec may have changed since (more
    consumers, a longer minOverlap). A "no" returns the rotation to verification."""
    checked = _against_spec(spec, state, now)
    verdict = _may_proceed(spec, checked, now)
    if verdict.go:
        return None
    waiting = checked.evolve(phase=back_to, message=verdict.message)
    return Step(waiting, requeue_after=_next_wake(spec, waiting, now))


def _failing(spec: RotationSpec, state: RotationState) -> frozenset[str]:
    """Consumers failing for ``failureThreshold`` rounds in a row (pending ones never are)."""
    return frozenset(c.name for c in state.consumers if not c.ok and not c.pending
                     and c.consecutive_failures >= spec.failure_threshold)


def _verify(spec: RotationSpec, state: RotationState, now: datetime.datetime,
            probe: ProbeRound | None) -> Step:
    acceptance = state.next is not None
    recorded = _record(spec, state, probe, now) if probe is not None else state
    recorded = _against_spec(spec, recorded, now)
    verdict = _may_proceed(spec, recorded, now)
    events: list[Event] = []
    # Warn when the set of failing consumers changes, not on every new message (a PromQL value
    # that moves from 12 to 9 is the same failure).
    was_failing, failing = _failing(spec, state), _failing(spec, recorded)
    if failing and failing != was_failing:
        events.append(Event("Warning", "ConsumerFailing", verdict.message))
    elif was_failing and not failing:
        events.append(Event("Normal", "ConsumersRecovered", "every consumer passes again"))

    if verdict.go:
        if state.phase == Phase.HOLDING:
            events.append(Event("Normal", "HoldReleased", verdict.message))
        events.append(Event("Normal", verdict.reason, verdict.message))  # Accepted / Retired
        nxt = Phase.PROMOTING if acceptance else Phase.REVOKING
        return Step(recorded.evolve(phase=nxt, message=verdict.message), events=tuple(events))

    phase = Phase.VERIFYING_ACCEPTANCE if acceptance else Phase.VERIFYING_RETIREMENT
    stuck = any(not c.ok for c in recorded.consumers)  # failing, or pending for too long
    if stuck and policies.past_max_overlap(spec, state, now):
        if state.phase != Phase.HOLDING:
            events.append(Event("Warning", "Holding", (
                f"consumers still failing after maxOverlap {format_duration(spec.max_overlap)}; "
                f"holding: version {state.previous if not acceptance else state.current} is "
                f"not revoked. {verdict.message}")))
        phase = Phase.HOLDING
    elif state.phase == Phase.HOLDING and not stuck:
        phase = Phase.HOLDING  # stays until verification completes
    message = verdict.message if phase != Phase.HOLDING else f"holding: {verdict.message}"
    waiting = recorded.evolve(phase=phase, message=message)
    return Step(waiting, events=tuple(events), requeue_after=_next_wake(spec, waiting, now))


def _next_wake(spec: RotationSpec, state: RotationState, now: datetime.datetime) -> float:
    """Seconds until something can change: the next probe, or the end of a floor or delay."""
    candidates: list[datetime.datetime] = []
    if spec.expected(state.stage):
        last = state.last_probe_time or now
        candidates.append(last + datetime.timedelta(seconds=spec.interval))
    floors = [
        (state.phase_start_time if state.next is not None else state.current_version_time,
         spec.min_overlap),
        (state.verified_time, spec.revocation_delay),
        (state.phase_start_time, spec.max_overlap),
    ]
    if state.phase == Phase.ACTIVATING:
        floors.append((state.phase_start_time, spec.activate_after or 0.0))
    for since, seconds in floors:
        if since is not None:
            candidates.append(since + datetime.timedelta(seconds=seconds))
    future = [(c - now).total_seconds() for c in candidates if c > now]
    return min(future, default=spec.interval)
