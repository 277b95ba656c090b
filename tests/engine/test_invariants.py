"""Hypothesis drives the pure engine through random histories and checks the six invariants.

The machine plays the reconcile loop of :mod:`keyrotor.engine.rotation` exactly as the operator
does (probe if due, step, carry out the effect on the slots, persist the state through the real
status encoding), and interleaves clock ticks of milliseconds to months, consumers breaking and
recovering, crashes after the effect but before the status write, restarts, spec edits, manual
triggers and suspension. Secret material is a random token per version, so the checks can also
look for it where it must never appear.
"""

from __future__ import annotations

import datetime
import json
import secrets
from dataclasses import dataclass, field, replace

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from keyrotor import status as status_io
from keyrotor.engine.model import (
    Activate,
    Approval,
    ConsumerResult,
    EmergencyRevoke,
    Phase,
    ProbeRound,
    PromoteTo,
    Revoke,
    RotationSpec,
    RotationState,
    Stage,
    Strategy,
)
from keyrotor.engine.rotation import approve, probe_due, step
from keyrotor.publishing.slots import Slots, apply

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
CONSUMERS = ("api", "worker")
ROLLOUT = "Deployment/api"  # a rollout restart target: checked only before revoking
GATE = "gate"  # a consumer with during: Acceptance
READY = "presenters"  # a consumer with during: Activation
TICKS = st.sampled_from([0.001, 0.5, 1, 5, 15, 59, 61, 600, 3600, 86400, 30 * 86400])


@dataclass
class History:
    """What the consumers and the slots went through, to judge invariants 2 and 4 by."""

    rounds: list[tuple[int, bool]] = field(default_factory=list)  # (version, all passed)
    materials: dict[int, str] = field(default_factory=dict)
    promoted_at: dict[int, datetime.datetime] = field(default_factory=dict)
    max_current: int = 0


class RotationMachine(RuleBasedStateMachine):
    @initialize(strategy=st.sampled_from(list(Strategy)),
                consumers=st.sampled_from([(), ("api",), CONSUMERS]),
                successes=st.integers(1, 4),
                every=st.sampled_from([None, 60.0, 3600.0, 86400.0]),
                rollout=st.sampled_from([(), (ROLLOUT,)]),
                gate=st.sampled_from([(), (GATE,)]),
                ready=st.sampled_from([(), (READY,)]),
                activate_after=st.sampled_from([None, 0.0, 90.0]))
    def setup(self, strategy: Strategy, consumers: tuple[str, ...], successes: int,
              every: float | None, rollout: tuple[str, ...], gate: tuple[str, ...],
              ready: tuple[str, ...], activate_after: float | None) -> None:
        self.now = T0
        self.spec = RotationSpec(strategy=strategy, every=every, min_overlap=600,
                                 max_overlap=3600, interval=15, successes_required=successes,
                                 consumer_names=consumers, retirement_names=rollout,
                                 acceptance_names=gate, activation_names=ready,
                                 activate_after=activate_after)
        self.persisted: dict[str, object] = {}
        self.slots: Slots[str] = Slots()
        self.healthy = dict.fromkeys((*CONSUMERS, ROLLOUT, GATE, READY), True)
        self.activated_at: dict[int, datetime.datetime] = {}
        self.trigger: str | None = None
        self.history = History()
        self.ever_issued = False
        self.approved_emergencies = 0
        self.skipped: set[int] = set()
        self.revocations: list[int] = []

    # ---- the world ---------------------------------------------------------------------------

    @rule(seconds=TICKS)
    def tick(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)

    @rule(name=st.sampled_from((*CONSUMERS, ROLLOUT, GATE, READY)), ok=st.booleans())
    def consumer_health(self, name: str, ok: bool) -> None:
        self.healthy[name] = ok

    @rule()
    def manual_trigger(self) -> None:
        self.trigger = secrets.token_hex(4)

    @rule(suspend=st.booleans(), min_overlap=st.sampled_from([0.0, 60.0, 600.0]),
          max_overlap=st.sampled_from([600.0, 3600.0]), successes=st.integers(1, 4),
          consumers=st.sampled_from([(), ("api",), CONSUMERS]))
    def edit_spec(self, suspend: bool, min_overlap: float, max_overlap: float, successes: int,
                  consumers: tuple[str, ...]) -> None:
        self.spec = RotationSpec(
            strategy=self.spec.strategy, every=self.spec.every, suspend=suspend,
            min_overlap=min_overlap, max_overlap=max_overlap, interval=self.spec.interval,
            successes_required=successes, consumer_names=consumers,
            retirement_names=self.spec.retirement_names, activate_after=self.spec.activate_after,
            acceptance_names=self.spec.acceptance_names,
            activation_names=self.spec.activation_names)

    @rule(approvers=st.lists(st.sampled_from(["alice", "bob", "carol"]), max_size=3),
          required=st.integers(1, 3), request=st.sampled_from(["r1", "r2"]),
          wrong=st.booleans())
    def emergency_approvals(self, approvers: list[str], required: int, request: str,
                            wrong: bool) -> None:
        """A revoke-now request's approvals arrive (the reconciler judges them first)."""
        self.spec = replace(self.spec, approvals_required=required)
        state = self._state()
        if state.phase == Phase.EMERGENCY:
            return  # the reconciler judges no approvals then
        judged = tuple(Approval(a, not wrong, "WrongCode" if wrong else "Accepted", "")
                       for a in approvers)
        result = approve(self.spec, state, now=self.now, request=request, judged=judged)
        assert result.effect is None  # approving allocates; it never acts before persisting
        if result.state.phase == Phase.EMERGENCY:
            # Approvals of the same request add up; wrong codes never count.
            assert len(set(result.state.approved_by)) >= required
            assert result.state.next == state.latest + 1
            self.approved_emergencies += 1
            # A version allocated but not generated yet (Generating) is skipped: it is
            # revoked before it ever existed.
            self.skipped.update(v for v in result.state.revoking
                                if v not in self.history.materials)
        self.persisted = json.loads(json.dumps(status_io.to_status(result.state)))

    # ---- the operator --------------------------------------------------------------------------

    def _state(self) -> RotationState:
        return status_io.from_status(self.persisted)

    def _generate(self, version: int) -> str:
        assert version not in self.history.materials, f"version {version} generated twice"
        material = secrets.token_urlsafe(16)
        self.history.materials[version] = material
        return material

    def _probe(self, version: int, stage: str) -> ProbeRound:
        results = tuple(ConsumerResult(name=n, ok=self.healthy[n],
                                       message="ok" if self.healthy[n] else "HTTP 401",
                                       pending=n == ROLLOUT)
                        for n in self.spec.expected(stage))
        round_ = ProbeRound(version=version, results=results)
        self.history.rounds.append((version, round_.ok))
        return round_

    def _passed_rounds(self, version: int) -> int:
        """Consecutive passing rounds with ``version`` at the end of the history."""
        count = 0
        for probed, ok in reversed(self.history.rounds):
            if probed != version or not ok:
                break
            count += 1
        return count

    def _carry_out(self, crash_after_effect: bool) -> None:
        state = self._state()
        version = probe_due(self.spec, state, self.now)
        probe = self._probe(version, state.stage) if version is not None else None
        held = {slot: v.version for slot, v in self.slots.filled().items()}
        result = step(self.spec, state, now=self.now, trigger=self.trigger, probe=probe,
                      held=held)
        effect = result.effect
        presents_now = (isinstance(effect, PromoteTo) and not effect.generate
                        and (self.slots.current is None
                             or self.slots.current.version != effect.version))
        if presents_now and self.spec.expected("acceptance"):
            # Invariant 2: presented only after every acceptor accepted it enough times (a
            # replay after a crash, when the Secret already presents it, changes nothing).
            assert isinstance(effect, PromoteTo)
            assert self._passed_rounds(effect.version) >= self.spec.successes_required
        revokes_now = (isinstance(effect, Revoke) and self.slots.previous is not None
                       and self.slots.previous.version == effect.version)
        if isinstance(effect, Revoke) and revokes_now:  # a replay after a crash changes nothing
            current = self.slots.current
            assert current is not None
            promoted = self.history.promoted_at[current.version]
            # Invariant 2 / 6: never revoked before minOverlap, nor while consumers fail.
            assert (self.now - promoted).total_seconds() >= self.spec.min_overlap
            if self.spec.expected("retirement"):
                assert self._passed_rounds(current.version) >= self.spec.successes_required
            if self.spec.strategy == Strategy.ONE_KEY and self.spec.activate_after is not None:
                # The target swapped before the old version was revoked, never after.
                assert current.version in self.activated_at
            self.revocations.append(effect.version)
        if isinstance(effect, EmergencyRevoke):
            # The one exception to invariant 2, and only when approved.
            assert state.phase == Phase.EMERGENCY and state.approved_by
            assert self.approved_emergencies > 0
        if isinstance(effect, Activate):
            assert self.slots.current is not None
            assert self.slots.current.version == effect.version, "activated before presented"
            assert self.slots.previous is not None, "activated with no fallback"
            waited = (self.now - self.history.promoted_at[effect.version]).total_seconds()
            assert waited >= (self.spec.activate_after or 0.0)
            if self.spec.activation_names and effect.version not in self.activated_at:
                # Swapped only after the presenters were seen holding the version.
                assert self._passed_rounds(effect.version) >= self.spec.successes_required
            self.activated_at.setdefault(effect.version, self.now)
        if effect is not None:
            before = self.slots.current
            self.slots = apply(effect, self.slots, self._generate)
            if self.slots.current is not before and self.slots.current is not None:
                self.history.promoted_at.setdefault(self.slots.current.version, self.now)
        if crash_after_effect:
            if probe is not None:
                # The round was observed but never persisted: the restarted operator cannot
                # know it, so it does not count against the consecutive rounds either.
                self.history.rounds.pop()
            return  # the status write never happened
        encoded = status_io.to_status(result.state)
        self.persisted = json.loads(json.dumps(encoded))
        assert result.requeue_after >= 0

    @rule()
    def reconcile(self) -> None:
        self._carry_out(crash_after_effect=False)

    @rule()
    def crash_after_effect(self) -> None:
        self._carry_out(crash_after_effect=True)

    @rule(rounds=st.integers(1, 30), seconds=TICKS)
    def run_for_a_while(self, rounds: int, seconds: float) -> None:
        for _ in range(rounds):
            self._carry_out(crash_after_effect=False)
            self.now += datetime.timedelta(seconds=seconds)

    # ---- the invariants ------------------------------------------------------------------------

    @invariant()
    def a_key_is_always_there(self) -> None:  # 1
        if self.slots.current is not None:
            self.ever_issued = True
        if self.ever_issued:
            assert self.slots.current is not None

    @invariant()
    def at_most_two_versions(self) -> None:  # 3
        assert len(self.slots.filled()) <= 2

    @invariant()
    def versions_only_increase(self) -> None:  # 4
        state = self._state()
        for slot in self.slots.filled().values():
            assert slot.version <= max(state.latest, max(self.history.materials, default=0))
            assert self.history.materials[slot.version] == slot.material
        if self.slots.current is not None:
            assert self.slots.current.version >= self.history.max_current
            self.history.max_current = self.slots.current.version
        if self.slots.next is not None and self.slots.current is not None:
            assert self.slots.next.version > self.slots.current.version
        if self.slots.previous is not None and self.slots.current is not None:
            assert self.slots.previous.version < self.slots.current.version
        # No version is skipped: every generated version but the newest became current.
        issued = sorted({*self.history.materials, *self.skipped})
        assert issued == list(range(1, len(issued) + 1))
        assert self.revocations == sorted(set(self.revocations))

    @invariant()
    def no_material_in_status(self) -> None:  # 5
        text = json.dumps(self.persisted)
        for material in self.history.materials.values():
            assert material not in text

    @invariant()
    def holding_past_max_overlap(self) -> None:  # 6
        state = self._state()
        if state.phase == Phase.HOLDING:
            conds = {c["type"]: c for c in status_io.conditions(state, now=self.now,
                                                                 generation=1)}
            assert conds["Degraded"]["status"] == "True"
            assert state.previous is None or state.previous == (
                self.slots.previous.version if self.slots.previous else None)

    @invariant()
    def staged_means_never_presented_early(self) -> None:
        # In TwoKeys, a staged version is never current before promotion.
        if self.slots.next is not None:
            assert self.slots.current is not None
            assert self.slots.current.version < self.slots.next.version
        if isinstance(self._state(), RotationState) and self._state().phase == Phase.IDLE:
            assert self.slots.next is None or self._state().next is None


RotationMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRotationInvariants = RotationMachine.TestCase


def test_a_full_two_key_rotation_in_milliseconds() -> None:
    """A month-long schedule, driven by an injected clock: the whole protocol in order."""
    spec = RotationSpec(every=30 * 86400, min_overlap=600, max_overlap=86400, interval=15,
                        successes_required=2, consumer_names=("api",))
    state, now = RotationState(), T0
    ok = ProbeRound(version=0, results=(ConsumerResult("api", True, "HTTP 200"),))
    phases, effects = [], []
    for _ in range(5000):
        version = probe_due(spec, state, now)
        probe = ProbeRound(version=version, results=ok.results) if version else None
        result = step(spec, state, now=now, probe=probe)
        phases.append(result.state.phase)
        if result.effect:
            effects.append(type(result.effect).__name__ + str(result.effect.version))
        state = result.state
        now += datetime.timedelta(seconds=max(result.requeue_after, 0.001))
        if state.rotation_count == 2:
            break
    assert effects == ["Issue1", "Stage2", "PromoteTo2", "Revoke1", "Stage3", "PromoteTo3",
                       "Revoke2"]
    assert Phase.VERIFYING_ACCEPTANCE in phases and Phase.VERIFYING_RETIREMENT in phases
    assert state.current == 3 and state.previous is None and state.latest == 3
    # Two rotations a month apart took about two months of injected time.
    assert 60 <= (now - T0).total_seconds() / 86400 < 61


def test_failing_consumer_holds_and_recovers() -> None:
    spec = RotationSpec(every=3600, min_overlap=60, max_overlap=300, interval=10,
                        successes_required=1, consumer_names=("api",))
    state = RotationState(phase=Phase.IDLE, current=1, latest=1, current_version_time=T0)
    now = T0 + datetime.timedelta(hours=2)
    healthy = {"api": True}
    effects: list[object] = []
    events: list[str] = []
    seen_holding = False
    for i in range(400):
        if i == 2:
            healthy["api"] = False  # breaks right after staging
        if seen_holding and i > 150:
            healthy["api"] = True
        version = probe_due(spec, state, now)
        probe = None
        if version is not None:
            probe = ProbeRound(version=version, results=(ConsumerResult(
                "api", healthy["api"], "HTTP 200" if healthy["api"] else "HTTP 401"),))
        result = step(spec, state, now=now, probe=probe)
        effects += [result.effect] if result.effect else []
        events += [e.reason for e in result.events]
        state = result.state
        if state.phase == Phase.HOLDING:
            seen_holding = True
            assert not any(isinstance(e, PromoteTo) for e in effects)
        now += datetime.timedelta(seconds=max(result.requeue_after, 0.001))
        if state.rotation_count == 1:
            break
    assert seen_holding
    assert events.count("Holding") == 1
    assert "ConsumerFailing" in events and "ConsumersRecovered" in events
    assert [type(e) for e in effects] == [Stage, PromoteTo, Revoke]
    assert state.current == 2 and state.previous is None


def test_pending_rollout_waits_quietly_then_holds_past_max_overlap() -> None:
    """A rollout in progress holds revocation without Warning events; one stuck past
    maxOverlap holds with one, and the rotation finishes once it rolls out."""
    spec = RotationSpec(min_overlap=0, max_overlap=300, interval=10, successes_required=1,
                        retirement_names=(ROLLOUT,))
    state = RotationState(phase=Phase.IDLE, current=1, latest=1, current_version_time=T0)
    now = T0
    rolled_out = False
    events: list[tuple[str, str]] = []
    phases: list[Phase] = []
    for i in range(200):
        if i == 60:
            rolled_out = True
        version = probe_due(spec, state, now)
        probe = None
        if version is not None:
            probe = ProbeRound(version=version, results=(ConsumerResult(
                ROLLOUT, rolled_out, "rolled out" if rolled_out else "1 of 2 updated replicas",
                pending=not rolled_out),))
        result = step(spec, state, now=now, trigger="go" if i == 0 else None, probe=probe)
        events += [(e.type, e.reason) for e in result.events]
        state = result.state
        phases.append(state.phase)
        if state.phase == Phase.VERIFYING_RETIREMENT and not rolled_out and state.consumers:
            assert state.message.startswith(f"waiting for {ROLLOUT}: 1 of 2")
            conds = {c["type"]: c for c in status_io.conditions(state, now=now, generation=1)}
            assert conds["ConsumersVerified"]["reason"] == "Verifying"
        now += datetime.timedelta(seconds=max(result.requeue_after, 0.001))
        if state.rotation_count == 1:
            break
    warnings = [reason for kind, reason in events if kind == "Warning"]
    assert warnings == ["Holding"], events  # no ConsumerFailing for a rollout in progress
    assert Phase.HOLDING in phases and state.rotation_count == 1 and state.previous is None


def test_short_failures_while_kubelet_catches_up_are_not_warnings() -> None:
    """Two failed rounds right after staging (the acceptor's mount is not refreshed yet) stay
    in status; the third in a row becomes one Warning, whatever its message says next."""
    def run(fail_rounds: int, threshold: int = 3) -> list[str]:
        spec = RotationSpec(min_overlap=0, max_overlap=3600, interval=10, successes_required=1,
                            consumer_names=("api",), failure_threshold=threshold)
        state = RotationState(phase=Phase.IDLE, current=1, latest=1, current_version_time=T0)
        now, warnings, rounds = T0, [], 0
        for i in range(100):
            version = probe_due(spec, state, now)
            probe = None
            if version is not None:
                ok = rounds >= fail_rounds
                probe = ProbeRound(version=version, results=(ConsumerResult(
                    "api", ok, "HTTP 200" if ok else f"HTTP 401 (round {rounds})"),))
                rounds += 1
            result = step(spec, state, now=now, trigger="go" if i == 0 else None, probe=probe)
            warnings += [e.reason for e in result.events if e.type == "Warning"]
            state = result.state
            now += datetime.timedelta(seconds=max(result.requeue_after, 0.001))
            if state.rotation_count == 1:
                return warnings
        raise AssertionError("the rotation did not finish")

    assert run(fail_rounds=2) == []
    assert run(fail_rounds=6) == ["ConsumerFailing"]  # once, though every message differs
    assert run(fail_rounds=1, threshold=1) == ["ConsumerFailing"]


def test_a_crash_after_the_effect_finishes_the_step_instead_of_reconsidering() -> None:
    """Found by the state machine: the Secret already lost ``previous`` (the Revoke ran, the
    process died before persisting Idle), then the spec gained a consumer. Reconsidering would
    hold a version that is gone; the step is finished instead. Same for a done promotion."""
    spec = RotationSpec(min_overlap=0, max_overlap=600, interval=10, successes_required=1,
                        consumer_names=("api",))
    revoking = RotationState(phase=Phase.REVOKING, current=2, previous=1, latest=2,
                             current_version_time=T0, phase_start_time=T0)
    later = T0 + datetime.timedelta(hours=1)
    undecided = step(spec, revoking, now=later, held={"current": 2, "previous": 1})
    assert undecided.state.phase == Phase.VERIFYING_RETIREMENT and undecided.effect is None
    done = step(spec, revoking, now=later, held={"current": 2})
    assert done.state.phase == Phase.IDLE and done.state.previous is None
    assert done.effect == Revoke(1)  # replayed: idempotent, also at the backend

    promoting = RotationState(phase=Phase.PROMOTING, current=1, next=2, latest=2,
                              current_version_time=T0, phase_start_time=T0)
    undecided = step(spec, promoting, now=later, held={"current": 1, "next": 2})
    assert undecided.state.phase == Phase.VERIFYING_ACCEPTANCE
    done = step(spec, promoting, now=later, held={"current": 2, "previous": 1})
    assert done.state.phase == Phase.VERIFYING_RETIREMENT and done.state.current == 2
