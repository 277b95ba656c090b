"""The engine's vocabulary: the parsed spec, the persisted state, probe results and effects.

Everything here is plain data. ``RotationSpec.parse`` turns the resource's ``spec`` into typed
values and rejects what admission could not (an unknown cron field, say) with an error that
names the field. ``RotationState`` is exactly what is stored in ``.status``: the engine keeps no
other memory, so any phase resumes after a crash from the status alone.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from keyrotor.engine.durations import parse_duration
from keyrotor.errors import SpecError


class Phase(StrEnum):
    IDLE = "Idle"
    GENERATING = "Generating"
    ACTIVATING = "Activating"
    STAGING = "Staging"
    VERIFYING_ACCEPTANCE = "VerifyingAcceptance"
    PROMOTING = "Promoting"
    VERIFYING_RETIREMENT = "VerifyingRetirement"
    REVOKING = "Revoking"
    HOLDING = "Holding"
    FAILED = "Failed"
    # An approved emergency revocation between its approval (persisted, with the new version
    # allocated) and its effect: a crash in between replays the effect, never the approval.
    EMERGENCY = "EmergencyRevoking"


class Strategy(StrEnum):
    TWO_KEYS = "TwoKeys"
    ONE_KEY = "OneKey"


@dataclass(frozen=True)
class RotationSpec:
    """The parts of a RotatingSecret's spec that the engine decides with (times in seconds)."""

    strategy: Strategy = Strategy.TWO_KEYS
    every: float | None = None
    schedule: str | None = None
    min_overlap: float = 600.0
    max_overlap: float = 86400.0
    suspend: bool = False
    interval: float = 15.0
    successes_required: int = 3
    # Consecutive failed rounds before a consumer's failure becomes a Warning event: the first
    # rounds after staging often fail only because kubelet has not refreshed the mount yet.
    failure_threshold: int = 3
    revocation_delay: float = 0.0
    consumer_names: tuple[str, ...] = ()  # probed in every verifying phase
    # Probed only before presenting (consumers with ``during: Acceptance``).
    acceptance_names: tuple[str, ...] = ()
    # Checked only before revoking: ``during: Retirement`` consumers and the rollout restarts
    # of spec.rolloutRestartTargets.
    retirement_names: tuple[str, ...] = ()
    # OneKey with a target: the only consumers probed before the target swaps
    # (``during: Activation``, e.g. "every presenter holds the new version").
    activation_names: tuple[str, ...] = ()
    # OneKey with a target: how long presenters get to load the new version before the target
    # swaps to it (None: there is no target to activate).
    activate_after: float | None = None
    # Emergency revocation: approvals from different approvers needed, and how long one
    # request collects them.
    approvals_required: int = 1
    request_ttl: float = 600.0

    def expected(self, stage: str) -> tuple[str, ...]:
        """The names whose probe results ``stage`` (see :attr:`RotationState.stage`) waits
        for. Before activation only ``during: Activation`` consumers count: the target does
        not accept the new version yet, so the others would fail."""
        if stage == "activation":
            return self.activation_names
        extra = self.acceptance_names if stage == "acceptance" else self.retirement_names
        return self.consumer_names + extra

    @classmethod
    def parse(cls, spec: dict[str, Any]) -> RotationSpec:
        from keyrotor.engine.validation import check

        spec = check(spec)  # every field's type and range first (a SpecError names it)
        rotation = spec.get("rotation") or {}
        verification = spec.get("verification") or {}
        revocation = spec.get("revocation") or {}
        emergency = spec.get("emergency") or {}
        schedule = rotation.get("schedule")
        if schedule is not None:
            from keyrotor.engine.schedule import validate_cron

            validate_cron(schedule, field="spec.rotation.schedule")
        every = rotation.get("every")
        parsed = cls(
            strategy=Strategy(spec.get("strategy", Strategy.TWO_KEYS)),
            every=parse_duration(every, field="spec.rotation.every") if every else None,
            schedule=schedule,
            min_overlap=parse_duration(rotation.get("minOverlap", "10m"),
                                       field="spec.rotation.minOverlap"),
            max_overlap=parse_duration(rotation.get("maxOverlap", "24h"),
                                       field="spec.rotation.maxOverlap"),
            suspend=bool(rotation.get("suspend", False)),
            interval=parse_duration(verification.get("interval", "15s"),
                                    field="spec.verification.interval"),
            successes_required=int(verification.get("successesRequired", 3)),
            failure_threshold=int(verification.get("failureThreshold", 3)),
            revocation_delay=parse_duration(revocation.get("delay", "0s"),
                                            field="spec.revocation.delay"),
            consumer_names=_during(spec, "Both"),
            acceptance_names=_during(spec, "Acceptance"),
            activation_names=_during(spec, "Activation"),
            retirement_names=_during(spec, "Retirement") + tuple(
                restart_name(t) for t in spec.get("rolloutRestartTargets") or ()),
            activate_after=_activate_after(spec),
            approvals_required=int(emergency.get("approvals", 1)),
            request_ttl=parse_duration(emergency.get("requestTTL", "10m"),
                                       field="spec.emergency.requestTTL"),
        )
        if parsed.every is not None and parsed.schedule is not None:
            raise SpecError("spec.rotation", "set either every or schedule, not both")
        if parsed.min_overlap > parsed.max_overlap:
            raise SpecError("spec.rotation.minOverlap", "must not exceed maxOverlap")
        if parsed.successes_required < 1:
            raise SpecError("spec.verification.successesRequired", "must be at least 1")
        if parsed.approvals_required < 1:
            raise SpecError("spec.emergency.approvals", "must be at least 1")
        return parsed


def restart_name(target: dict[str, Any]) -> str:
    """How a rollout restart target shows among the consumers: ``Deployment/api``."""
    return f"{target['kind']}/{target['name']}"


def _during(spec: dict[str, Any], phase: str) -> tuple[str, ...]:
    return tuple(c["name"] for c in spec.get("consumers") or ()
                 if c.get("during", "Both") == phase)


def _activate_after(spec: dict[str, Any]) -> float | None:
    target = spec.get("target")
    if not target or spec.get("strategy") != Strategy.ONE_KEY:
        return None
    return parse_duration(target.get("activateAfter", "90s"), field="spec.target.activateAfter")


@dataclass(frozen=True)
class ConsumerResult:
    name: str
    ok: bool
    message: str
    version: int | None = None
    consecutive_failures: int = 0
    time: datetime.datetime | None = None
    # Not passed yet, but nothing is wrong: a rollout in progress. It holds the rotation like
    # a failure does, without a Warning event (until maxOverlap: then it holds with one).
    pending: bool = False


@dataclass(frozen=True)
class ProbeRound:
    """One probe of every consumer with the version in ``slot`` ("next" or "current")."""

    version: int
    results: tuple[ConsumerResult, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failing(self) -> tuple[ConsumerResult, ...]:
        return tuple(r for r in self.results if not r.ok)


@dataclass(frozen=True)
class RotationState:
    """Everything the engine remembers; stored verbatim in ``.status``."""

    phase: Phase = Phase.IDLE
    current: int | None = None
    previous: int | None = None
    next: int | None = None
    latest: int = 0
    rotation_count: int = 0
    current_version_time: datetime.datetime | None = None
    last_rotation_time: datetime.datetime | None = None
    rotation_start_time: datetime.datetime | None = None
    phase_start_time: datetime.datetime | None = None
    last_probe_time: datetime.datetime | None = None
    verified_time: datetime.datetime | None = None
    successful_rounds: int = 0
    last_trigger: str | None = None
    last_result: str | None = None
    message: str = ""
    consumers: tuple[ConsumerResult, ...] = field(default_factory=tuple)
    # The emergency revocation request being approved (the keyrotor.io/revoke-now annotation's
    # value), who approved it, since when, how it ended (Approved, Expired, Rejected), and the
    # versions an approved one revokes; while it is open, how many approvals it needs and when
    # it expires (spec.emergency as last judged, so a reader sees "1 of 2, until T").
    emergency_request: str | None = None
    approved_by: tuple[str, ...] = ()
    emergency_start: datetime.datetime | None = None
    emergency_result: str | None = None
    revoking: tuple[int, ...] = ()
    emergency_required: int | None = None
    emergency_expiry: datetime.datetime | None = None

    def evolve(self, **changes: Any) -> RotationState:
        return replace(self, **changes)

    @property
    def stage(self) -> str:
        """What verification is for now: ``acceptance`` of a staged version (TwoKeys),
        ``activation`` of the current one at the target (OneKey), or ``retirement`` of the
        previous one."""
        if self.next is not None:
            return "acceptance"
        return "activation" if self.phase == Phase.ACTIVATING else "retirement"

    @property
    def rotating(self) -> bool:
        return self.phase not in (Phase.IDLE, Phase.FAILED)


# ---- effects: what the adapters must make true before the new state is persisted ----------
# Each is idempotent and keyed by version, so replaying one after a crash changes nothing.


@dataclass(frozen=True)
class Issue:
    """Create the first version directly as ``current`` (nothing to overlap with yet)."""

    version: int


@dataclass(frozen=True)
class Stage:
    """Generate ``version`` (once) and publish it as ``next``: accept it, do not present it."""

    version: int


@dataclass(frozen=True)
class PromoteTo:
    """``current`` = ``version`` (from ``next``, or freshly generated under OneKey),
    ``previous`` = the old current, ``next`` emptied."""

    version: int
    generate: bool = False


@dataclass(frozen=True)
class Activate:
    """OneKey with a target: swap the target to ``version`` (already ``current`` in the
    Secret, so presenters hold it before the target starts to require it)."""

    version: int


@dataclass(frozen=True)
class Revoke:
    """Empty ``previous`` if it still holds ``version``; destroy it in the backend."""

    version: int


@dataclass(frozen=True)
class Republish:
    """Repair a Secret that drifted (deleted, edited by hand): write exactly these versions.
    Each is taken from the Secret where it is still intact, else made by the generator: a
    backend that holds it (Vault, an HSM) hands it back; ``fresh`` is the one version, if
    any, that is new (a number never used before; a target must accept it, as on Issue)."""

    current: int
    next: int | None = None
    previous: int | None = None
    fresh: int | None = None


@dataclass(frozen=True)
class EmergencyRevoke:
    """An approved emergency revocation: ``version`` (new) becomes the only version in the
    Secret, activated at the target like a first version, and every version in ``revoke`` is
    destroyed in the backend and at the target at once, skipping the overlap."""

    version: int
    revoke: tuple[int, ...] = ()


Effect = Issue | Stage | PromoteTo | Activate | Revoke | Republish | EmergencyRevoke


@dataclass(frozen=True)
class Approval:
    """One judged approval of an emergency revocation request (the code is never here)."""

    approver: str
    ok: bool
    reason: str  # Accepted, WrongCode, Replayed, Locked, LockedOut, UnknownApprover, ...
    message: str

    @property
    def event_reason(self) -> str:
        """The event (and audit action) this approval makes: accepted, rejected, or the
        wrong code that locks its approver out."""
        if self.ok:
            return "ApprovalAccepted"
        return "ApproverLocked" if self.reason == "LockedOut" else "ApprovalRejected"


# Reasons of the events that mark a step of one rotation: each happens once per version.
TRANSITIONS = frozenset({"RotationStarted", "Issued", "Staged", "Accepted", "Activated",
                         "Promoted", "Retired", "Revoked", "EmergencyApproved",
                         "EmergencyRevoked"})


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str

    @property
    def once_per_version(self) -> bool:
        """A step of a rotation (posted exactly once, under a name derived from the version),
        rather than news that may repeat (a consumer failing again)."""
        return self.reason in TRANSITIONS or self.once_per_phase

    @property
    def once_per_phase(self) -> bool:
        """Consumers failing: one Warning per version and stage (acceptance, retirement), not
        one per flap of a flapping consumer, nor one for the whole rotation (the retirement
        check failing is news after the acceptors failed)."""
        return self.reason == "ConsumerFailing"


@dataclass(frozen=True)
class Step:
    """The engine's answer: do ``effect`` (if any), then persist ``state`` and post ``events``."""

    state: RotationState
    effect: Effect | None = None
    events: tuple[Event, ...] = ()
    requeue_after: float = 0.0
