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
            "revoking": list(state.revoking) or None},
    }


def from_status(status: dict[str, Any] | None) -> RotationState:
    status = status or {}
    emergency = status.get("emergency") or {}
    return RotationState(
        phase=Phase(status.get("phase") or Phase.IDLE),
        current=status.get("currentVersion"),
        previous=status.get("previousVersion"),
        next=status.get("nextVersion"),
        latest=int(status.get("latestVersion") or 0),
        rotation_count=int(status.get("rotationCount") or 0),
        current_version_time=parse_ts(status.get("currentVersionTime")),
        last_rotation_time=parse_ts(status.get("lastRotationTime")),
        rotation_start_time=parse_ts(status.get("rotationStartTime")),
        phase_start_time=parse_ts(status.get("phaseStartTime")),
        last_probe_time=parse_ts(status.get("lastProbeTime")),
        verified_time=parse_ts(status.get("verifiedTime")),
        successful_rounds=int(status.get("successfulRounds") or 0),
        last_trigger=status.get("lastTrigger"),
        last_result=status.get("lastResult"),
        message=status.get("message") or "",
        consumers=tuple(
            ConsumerResult(name=c["name"], ok=bool(c.get("ok")), message=c.get("message", ""),
                           version=c.get("version"),
                           consecutive_failures=int(c.get("consecutiveFailures") or 0),
                           time=parse_ts(c.get("lastProbeTime")),
                           pending=bool(c.get("pending")))
            for c in status.get("consumers") or ()
        ),
        emergency_request=emergency.get("request"),
        approved_by=tuple(emergency.get("approvedBy") or ()),
        emergency_start=parse_ts(emergency.get("startTime")),
        emergency_result=emergency.get("lastResult"),
        revoking=tuple(int(v) for v in emergency.get("revoking") or ()),
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
