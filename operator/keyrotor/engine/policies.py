"""The rotation's three questions, each an ordered chain of small pure checks.

* "Rotate now?"              -> :data:`SHOULD_ROTATE`
* "May the staged version be presented?" (TwoKeys) -> :data:`MAY_PROMOTE`
* "May the previous version be revoked?"           -> :data:`MAY_REVOKE`

The shape follows cert-manager's ``policies`` package: each check looks at one thing and either
has no opinion (``None``) or returns a :class:`Verdict` with a reason and a human message. The
first verdict wins; its reason and message become the condition and the event, so a Holding
rotation explains itself ("consumer api: HTTP 401").
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from keyrotor.engine.durations import format_duration
from keyrotor.engine.model import Phase, RotationSpec, RotationState
from keyrotor.engine.schedule import next_rotation_time


@dataclass(frozen=True)
class Verdict:
    go: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Facts:
    spec: RotationSpec
    state: RotationState
    now: datetime.datetime
    trigger: str | None = None


Check = Callable[[Facts], Verdict | None]


def decide(checks: Sequence[Check], facts: Facts) -> Verdict:
    for check in checks:
        if (verdict := check(facts)) is not None:
            return verdict
    raise AssertionError("a policy chain must end with a check that always decides")


def _ts(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- rotate now? ---------------------------------------------------------------------------


def _in_progress(f: Facts) -> Verdict | None:
    if f.state.rotating:
        return Verdict(False, "InProgress", f"a rotation is already in phase {f.state.phase}")
    return None


def _initial(f: Facts) -> Verdict | None:
    if f.state.current is None:
        return Verdict(True, "Initial", "no version exists yet")
    return None


def _suspended(f: Facts) -> Verdict | None:
    if f.spec.suspend:
        return Verdict(False, "Suspended", "spec.rotation.suspend is true")
    return None


def _manual(f: Facts) -> Verdict | None:
    if f.trigger and f.trigger != f.state.last_trigger:
        return Verdict(True, "ManualTrigger",
                       f"annotation keyrotor.io/rotate changed to {f.trigger!r}")
    return None


def _schedule(f: Facts) -> Verdict:
    due = next_rotation_time(every=f.spec.every, schedule=f.spec.schedule,
                             since=f.state.current_version_time)
    if due is None:
        return Verdict(False, "OnDemand", "no schedule; rotates only on demand")
    if f.now >= due:
        return Verdict(True, "Scheduled", f"version {f.state.current} was due at {_ts(due)}")
    return Verdict(False, "NotDue", f"next rotation at {_ts(due)}")


SHOULD_ROTATE: tuple[Check, ...] = (_in_progress, _initial, _suspended, _manual, _schedule)


# ---- the verification phases ---------------------------------------------------------------


def _consumers_failing(f: Facts) -> Verdict | None:
    failing = [c for c in f.state.consumers if not c.ok and not c.pending]
    if not failing:
        return None
    detail = "; ".join(f"consumer {c.name}: {c.message}" for c in failing)
    return Verdict(False, "ConsumersFailing", detail)


def _consumers_pending(f: Facts) -> Verdict | None:
    pending = [c for c in f.state.consumers if not c.ok and c.pending]
    if not pending:
        return None
    detail = "; ".join(f"{c.name}: {c.message}" for c in pending)
    return Verdict(False, "Waiting", f"waiting for {detail}")


def _not_yet_verified(f: Facts) -> Verdict | None:
    if not f.spec.expected(f.state.stage):
        return None
    done, needed = f.state.successful_rounds, f.spec.successes_required
    if done < needed:
        return Verdict(False, "Verifying", f"{done} of {needed} probe rounds passed")
    return None


def _waiting_until(f: Facts, since: datetime.datetime | None,
                   seconds: float) -> datetime.datetime | None:
    """The end of a wait of ``seconds`` from ``since``, while it is still ahead."""
    if since is None or seconds <= 0:
        return None
    until = since + datetime.timedelta(seconds=seconds)
    return until if f.now < until else None


def _overlap_floor(f: Facts, since: datetime.datetime | None, what: str) -> Verdict | None:
    if (until := _waiting_until(f, since, f.spec.min_overlap)) is None:
        return None
    return Verdict(False, "MinOverlap", f"{what} until {_ts(until)} (minOverlap "
                   f"{format_duration(f.spec.min_overlap)})")


def _unprobed_staging_floor(f: Facts) -> Verdict | None:
    # With no consumer to ask, kubelet's refresh lag is the only risk: wait minOverlap.
    if f.spec.consumer_names:
        return None
    return _overlap_floor(f, f.state.phase_start_time, "no consumers to probe; staged version kept")


def _accepted(f: Facts) -> Verdict:
    return Verdict(True, "Accepted", f"every consumer accepts version {f.state.next}")


MAY_PROMOTE: tuple[Check, ...] = (
    _consumers_failing, _consumers_pending, _not_yet_verified, _unprobed_staging_floor, _accepted,
)


def _activation_floor(f: Facts) -> Verdict | None:
    wait = f.spec.activate_after or 0.0
    if (until := _waiting_until(f, f.state.phase_start_time, wait)) is None:
        return None
    return Verdict(False, "ActivateAfter", f"presenters get until {_ts(until)} to load "
                   f"version {f.state.current} (activateAfter {format_duration(wait)})")


def _ready_to_activate(f: Facts) -> Verdict:
    return Verdict(True, "Activating", f"presenters hold version {f.state.current}; the "
                   "target may swap to it")


MAY_ACTIVATE: tuple[Check, ...] = (
    _consumers_failing, _consumers_pending, _not_yet_verified, _activation_floor,
    _ready_to_activate,
)


def _min_overlap(f: Facts) -> Verdict | None:
    return _overlap_floor(f, f.state.current_version_time,
                          f"previous version {f.state.previous} kept")


def _revocation_delay(f: Facts) -> Verdict | None:
    if (until := _waiting_until(f, f.state.verified_time, f.spec.revocation_delay)) is None:
        return None
    return Verdict(False, "RevocationDelay", f"revocation delayed until {_ts(until)}")


def _retired(f: Facts) -> Verdict:
    return Verdict(True, "Retired", f"consumers verified on version {f.state.current}; "
                   f"previous version {f.state.previous} may be revoked")


MAY_REVOKE: tuple[Check, ...] = (
    _consumers_failing, _consumers_pending, _not_yet_verified, _min_overlap,
    _revocation_delay, _retired,
)


def past_max_overlap(spec: RotationSpec, state: RotationState, now: datetime.datetime) -> bool:
    """Has the phase that waits for consumers run longer than ``maxOverlap``?"""
    started = state.phase_start_time
    if state.phase == Phase.HOLDING:
        return True
    return started is not None and (now - started).total_seconds() > spec.max_overlap
