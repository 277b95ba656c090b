"""The resource's ``.status``: the engine's state in and out, and the conditions derived from it.

The state round-trips losslessly through :func:`to_status` / :func:`from_status` (the engine's
only memory is the status). Conditions follow cert-manager's style: ``Ready``, ``Rotating``,
``ConsumersVerified`` and ``Degraded``, each with a CamelCase reason and a human message; a
condition's ``lastTransitionTime`` changes only when its status does.

Nothing here ever sees secret material: the state holds version numbers, times and probe
messages, and probe messages are scrubbed of credentials by the probes themselves.
"""

from __future__ import annotations

import datetime
from typing import Any

from keyrotor.engine.model import ConsumerResult, Phase, RotationState
from keyrotor.errors import PermanentError


def ts(when: datetime.datetime | None) -> str | None:
    """RFC 3339 in UTC; microseconds are kept (when present) so decisions survive a round trip."""
    if when is None:
        return None
    when = when.astimezone(datetime.UTC)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{when.microsecond:06d}Z" if when.microsecond else f"{text}Z"


def parse_ts(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(datetime.UTC)


def to_status(state: RotationState) -> dict[str, Any]:
    """The status fields that carry the engine's state (``None`` removes a field on merge)."""
    return {
        "phase": str(state.phase),
        "currentVersion": state.current,
        "previousVersion": state.previous,
        "nextVersion": state.next,
        "latestVersion": state.latest,
        "rotationCount": state.rotation_count,
        "currentVersionTime": ts(state.current_version_time),
        "lastRotationTime": ts(state.last_rotation_time),
        "rotationStartTime": ts(state.rotation_start_time),
        "phaseStartTime": ts(state.phase_start_time),
        "lastProbeTime": ts(state.last_probe_time),
        "verifiedTime": ts(state.verified_time),
        "successfulRounds": state.successful_rounds,
        "lastTrigger": state.last_trigger,
        "lastResult": state.last_result,
        "message": state.message,
        "consumers": [
            {"name": c.name, "ok": c.ok, "message": c.message, "version": c.version,
             "consecutiveFailures": c.consecutive_failures, "lastProbeTime": ts(c.time),
             **({"pending": True} if c.pending else {})}
            for c in state.consumers
        ],
        "emergency": None if state.emergency_request is None else {
            "request": state.emergency_request, "approvedBy": list(state.approved_by),
            "startTime": ts(state.emergency_start), "lastResult": state.emergency_result,
            "revoking": list(state.revoking) or None, "required": state.emergency_required,
            "expiryTime": ts(state.emergency_expiry)},
    }


class StatusError(PermanentError):
    """A ``.status`` the engine cannot resume from (edited by hand, or written by something
    else): the message names the field. Nothing is guessed: a version or time read wrongly
    could skip, reuse or revoke a version, so the object stays as it is, Degraded, until a
    person repairs or removes the field."""

    reason = "InvalidStatus"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}; fix or remove the field "
                         "(kubectl edit --subresource=status)")
        self.field = field


_EARLIEST = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_LATEST = datetime.datetime(9000, 1, 1, tzinfo=datetime.UTC)  # room for a 10-year schedule


def _time(parent: dict[str, Any], key: str, field: str) -> datetime.datetime | None:
    value = parent.get(key)
    if value is None or value == "":
        return None
    try:
        when = parse_ts(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None or not _EARLIEST <= when <= _LATEST:
        raise StatusError(field, f"{str(value)[:40]!r} is not an RFC 3339 time")
    return when


def _count(parent: dict[str, Any], key: str, field: str, *, version: bool = False) -> int | None:
    value = parent.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < (1 if version else 0):
        raise StatusError(field, f"{str(value)[:40]!r} is not a "
                          f"{'version number' if version else 'count'}")
    return value


def _text(parent: dict[str, Any], key: str, field: str) -> str | None:
    value = parent.get(key)
    if value is not None and not isinstance(value, str):
        raise StatusError(field, "must be a string")
    return value


def _consumer(item: Any, field: str) -> ConsumerResult:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise StatusError(field, "must be an object with a name")
    for key in ("ok", "pending"):
        if item.get(key) is not None and not isinstance(item[key], bool):
            raise StatusError(f"{field}.{key}", "must be true or false")
    return ConsumerResult(name=item["name"], ok=bool(item.get("ok")),
                          message=_text(item, "message", f"{field}.message") or "",
                          version=_count(item, "version", f"{field}.version", version=True),
                          consecutive_failures=_count(item, "consecutiveFailures",
                                                      f"{field}.consecutiveFailures") or 0,
                          time=_time(item, "lastProbeTime", f"{field}.lastProbeTime"),
                          pending=bool(item.get("pending")))


# What each phase resumes from: the engine asserts these, so a status without them is refused.
_NEEDS_NEXT = frozenset({Phase.GENERATING, Phase.STAGING, Phase.VERIFYING_ACCEPTANCE,
                         Phase.PROMOTING, Phase.EMERGENCY})
_NEEDS_CURRENT = frozenset({Phase.ACTIVATING, Phase.VERIFYING_RETIREMENT, Phase.REVOKING,
                            Phase.HOLDING, Phase.PROMOTING, Phase.VERIFYING_ACCEPTANCE})


def from_status(status: dict[str, Any] | None) -> RotationState:
    """The engine's state stored in ``status``; :class:`StatusError` naming the field when a
    field has the wrong type or the fields contradict each other."""
    if status is None:
        status = {}
    if not isinstance(status, dict):
        raise StatusError("status", "must be an object")
    phase_text = status.get("phase") or Phase.IDLE
    if not isinstance(phase_text, str) or phase_text not in set(Phase):
        raise StatusError("status.phase", f"unknown phase {str(phase_text)[:40]!r}")
    phase = Phase(phase_text)
    current = _count(status, "currentVersion", "status.currentVersion", version=True)
    previous = _count(status, "previousVersion", "status.previousVersion", version=True)
    next_ = _count(status, "nextVersion", "status.nextVersion", version=True)
    latest = _count(status, "latestVersion", "status.latestVersion") or 0
    if latest < max(current or 0, previous or 0, next_ or 0):
        raise StatusError("status.latestVersion", "is below a version in use")
    if phase in _NEEDS_NEXT and next_ is None:
        raise StatusError("status.nextVersion", f"phase {phase} needs the version under way")
    if phase in _NEEDS_CURRENT and current is None:
        raise StatusError("status.currentVersion", f"phase {phase} needs a current version")
    consumers = status.get("consumers") or []
    if not isinstance(consumers, list):
        raise StatusError("status.consumers", "must be a list")
    emergency = status.get("emergency") or {}
    if not isinstance(emergency, dict):
        raise StatusError("status.emergency", "must be an object")
    approved = emergency.get("approvedBy") or []
    if not isinstance(approved, list) or not all(isinstance(a, str) for a in approved):
        raise StatusError("status.emergency.approvedBy", "must be a list of names")
    revoking = emergency.get("revoking") or []
    if not isinstance(revoking, list):
        raise StatusError("status.emergency.revoking", "must be a list of versions")
    request = _text(emergency, "request", "status.emergency.request")
    emergency_start = _time(emergency, "startTime", "status.emergency.startTime")
    emergency_result = _text(emergency, "lastResult", "status.emergency.lastResult")
    required = _count(emergency, "required", "status.emergency.required")
    expiry = _time(emergency, "expiryTime", "status.emergency.expiryTime")
    if request is not None and emergency_result is None and emergency_start is None:
        raise StatusError("status.emergency.startTime", "an open request needs its start time")
    return RotationState(
        phase=phase,
        current=current,
        previous=previous,
        next=next_,
        latest=latest,
        rotation_count=_count(status, "rotationCount", "status.rotationCount") or 0,
        current_version_time=_time(status, "currentVersionTime", "status.currentVersionTime"),
        last_rotation_time=_time(status, "lastRotationTime", "status.lastRotationTime"),
        rotation_start_time=_time(status, "rotationStartTime", "status.rotationStartTime"),
        phase_start_time=_time(status, "phaseStartTime", "status.phaseStartTime"),
        last_probe_time=_time(status, "lastProbeTime", "status.lastProbeTime"),
        verified_time=_time(status, "verifiedTime", "status.verifiedTime"),
        successful_rounds=_count(status, "successfulRounds", "status.successfulRounds") or 0,
        last_trigger=_text(status, "lastTrigger", "status.lastTrigger"),
        last_result=_text(status, "lastResult", "status.lastResult"),
        message=_text(status, "message", "status.message") or "",
        consumers=tuple(_consumer(c, f"status.consumers[{i}]")
                        for i, c in enumerate(consumers)),
        emergency_request=request,
        approved_by=tuple(approved),
        emergency_start=emergency_start,
        emergency_result=emergency_result,
        revoking=tuple(_count({"v": v}, "v", f"status.emergency.revoking[{i}]", version=True)
                       or 0 for i, v in enumerate(revoking)),
        emergency_required=required,
        emergency_expiry=expiry,
    )


def conditions(state: RotationState, *, now: datetime.datetime, generation: int | None,
               error: tuple[str, str] | None = None,
               existing: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The four conditions for ``state``; ``error`` is (reason, message) of a blocking problem."""
    failing = [c for c in state.consumers if not c.ok and not c.pending]
    verifying = state.phase in (Phase.VERIFYING_ACCEPTANCE, Phase.VERIFYING_RETIREMENT,
                                Phase.HOLDING)
    wanted: list[tuple[str, bool, str, str]] = []

    if state.current is None:
        wanted.append(("Ready", False, error[0] if error else "Issuing",
                       error[1] if error else "no version has been issued yet"))
    else:
        wanted.append(("Ready", True, "Current", f"version {state.current} is current"))

    if state.rotating:
        wanted.append(("Rotating", True, str(state.phase), state.message))
    else:
        wanted.append(("Rotating", False, "Idle", state.message))

    if failing:
        detail = "; ".join(f"consumer {c.name}: {c.message}" for c in failing)
        wanted.append(("ConsumersVerified", False, "ConsumersFailing", detail))
    elif verifying:
        wanted.append(("ConsumersVerified", False, "Verifying", state.message))
    else:
        wanted.append(("ConsumersVerified", True, "Verified",
                       "the last rotation's consumers were verified"))

    if error:
        wanted.append(("Degraded", True, error[0], error[1]))
    elif state.phase == Phase.HOLDING:
        wanted.append(("Degraded", True, "Holding", state.message))
    else:
        wanted.append(("Degraded", False, "AsExpected", "no problem seen"))

    previous = {c.get("type"): c for c in existing or ()}
    result = []
    for kind, ok, reason, message in wanted:
        status = "True" if ok else "False"
        before = previous.get(kind)
        since = before.get("lastTransitionTime") if before and before.get(
            "status") == status else ts(now)
        result.append({"type": kind, "status": status, "reason": reason, "message": message,
                       "lastTransitionTime": since, "observedGeneration": generation})
    return result


# Fields that change within a phase. Readers need the phase, the versions, each consumer's
# pass/fail and the conditions; the round counters, the time verification passed and the
# running commentary live in the reconciler's memory between writes and go out with the next
# one (after a crash, verification restarts, which only delays a revocation: safe).
_ROUND_FIELDS = frozenset({"lastProbeTime", "successfulRounds", "verifiedTime", "message"})


def _essence(status: dict[str, Any]) -> dict[str, Any]:
    view = {k: v for k, v in status.items()
            if k not in _ROUND_FIELDS and k not in ("consumers", "conditions") and v is not None}
    # Consumers matter to a reader when they fail or wait (passing is what is expected).
    view["consumers"] = sorted((c.get("name"), bool(c.get("pending")))
                               for c in status.get("consumers") or () if not c.get("ok"))
    view["conditions"] = sorted((c.get("type"), c.get("status"), c.get("reason"))
                                for c in status.get("conditions") or ())
    return view


def worth_writing(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether ``new`` tells a reader something ``old`` does not: a phase, a version, a
    consumer's pass/fail, a condition's status or reason, a time that a decision rests on."""
    return _essence(old or {}) != _essence(new)


def holds_state(stored: dict[str, Any], state: RotationState) -> bool:
    """Whether ``stored`` (a status read back) records ``state``, round counters apart: then a
    reconciler may keep the counters it has in memory."""
    mine = to_status(state)
    return _essence({k: stored.get(k) for k in mine}) == _essence(mine)
