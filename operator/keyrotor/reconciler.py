"""One reconcile of one RotatingSecret: read, probe, decide, act, persist, report.

The decisions are the engine's (:mod:`keyrotor.engine.rotation`); this module only carries
them out, in the order that makes crashes safe:

1. read the RotatingSecret and its Secret fresh from the API;
2. probe the consumers if the engine says a probe is due;
3. ask the engine for the next step;
4. carry out its effect on the Secret (idempotent, keyed by version);
5. persist the new state to ``.status`` with the resourceVersion as a precondition;
6. post the step's events and update the metrics, only after the state is persisted.

A crash between 4 and 5 replays the effect harmlessly. What only the operator can judge (a
Secret owned by someone else, a cron expression cronsim rejects) becomes the Degraded condition
and one Warning event, and the current key keeps working.

Before acting, a settled object's Secret is compared with its status through the metadata-only
Secret watch (:mod:`keyrotor.secretwatch`, in memory). Only when the watch saw it deleted or
written by someone else is the Secret read and judged (missing, versions unlike the status,
values unlike their fingerprints, labels gone); an effect that finds no current version to
apply to (``SlotError``) is judged the same way. The engine's :func:`repair` decides what to
re-publish or issue anew; the object reports ``Degraded`` with reason ``SecretDrift`` and one
Warning event until the next reconcile finds the Secret sound.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from keyrotor import metrics, provenance
from keyrotor import status as status_io
from keyrotor.audit import Action
from keyrotor.backends import Context
from keyrotor.engine.model import (
    Activate,
    Approval,
    ConsumerResult,
    Effect,
    EmergencyRevoke,
    Event,
    Issue,
    Phase,
    ProbeRound,
    Republish,
    Revoke,
    RotationSpec,
    RotationState,
    Stage,
    Step,
)
from keyrotor.engine.rotation import (
    SETTLED,
    approve,
    drifted,
    probe_due,
    published,
    rejection,
    repair,
    step,
)
from keyrotor.engine.schedule import next_rotation_time
from keyrotor.errors import (
    Conflict,
    InternalError,
    KeyrotorError,
    PermissionDenied,
    Reason,
    SpecError,
)
from keyrotor.generators import Generator, Material, from_spec, main_value, recoverable
from keyrotor.probes.http import HttpProbe, Probe, probe_all
from keyrotor.publishing.secret import (
    Owner,
    check_owner,
    decode,
    decoy_count,
    encode,
    inspect,
    render,
)
from keyrotor.publishing.slots import SlotError
from keyrotor.restarts import Restarter
from keyrotor.secretwatch import SecretCache
from keyrotor.targets import USERNAME, Target
from keyrotor.targets import from_spec as target_from_spec

log = logging.getLogger("keyrotor.reconciler")
TRIGGER_ANNOTATION = "keyrotor.io/rotate"
REQUEST_ANNOTATION = "keyrotor.io/revoke-now"  # an emergency revocation request's id
ERROR_RETRY = 30.0
ERROR_BACKOFF = (5.0, 300.0)  # first retry, ceiling: doubling in between


class Api(Protocol):
    """The Kubernetes calls a reconcile needs (see :class:`keyrotor.kube.KubeApi`)."""

    def get_rotating_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def patch_status(self, namespace: str, name: str, status: dict[str, Any], *,
                     resource_version: str | None) -> dict[str, Any]: ...
    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def write_secret(self, body: dict[str, Any], *, create: bool) -> str | None: ...
    def post_event(self, obj: dict[str, Any], *, type: str, reason: str, message: str,
                   name: str | None = None) -> None: ...


class Audit(Protocol):
    """The audit trail (:class:`keyrotor.audit.AuditLog`): raises ``AuditUnavailable`` when
    no sink took the line, and then the action is not taken. Blocking."""

    def record(self, *, action: str, actor: str, namespace: str, name: str, uid: str = "",
               versions: Mapping[str, int] | None = None,
               fingerprints: Mapping[str, str] | None = None,
               detail: Mapping[str, Any] | None = None, key: str | None = None) -> None: ...


class Judged(Protocol):
    approver: str
    ok: bool
    reason: str
    message: str


class ApprovalJudge(Protocol):
    """Judges and consumes the TOTP approvals of an emergency revocation request
    (:class:`keyrotor.approvals.Approvers`). Blocking."""

    def judge(self, namespace: str, rotating_secret: str, request: str | None, *,
              ended: str | None = None) -> list[Any]: ...


Prober = Callable[[list[Probe], dict[str, str]], Any]


def slot_text(material: Material) -> str:
    """The text a probe template sees for a slot: the main value, base64 if it is binary."""
    main = main_value(material)
    try:
        return main.decode()
    except UnicodeDecodeError:
        return base64.b64encode(main).decode()


def _secret_key(namespace: str, name: str, key: str, secret: dict[str, Any] | None) -> bytes:
    data = (secret or {}).get("data") or {}
    if key not in data:
        what = f"Secret {namespace}/{name}" if secret else f"no Secret {namespace}/{name}"
        raise SpecError("spec.generator", f"{what} has no key {key!r}" if secret else
                        f"{what}: create it with the credential under key {key!r}")
    return base64.b64decode(data[key])


def _probes(consumers: Any, generator: Generator, target: Target | None) -> list[Probe]:
    probes: list[Probe] = []
    for consumer in consumers:
        if consumer.get("http") is not None:
            probes.append(HttpProbe.from_spec(consumer))
        elif consumer.get("prometheus") is not None:
            from keyrotor.probes.prometheus import PrometheusProbe

            probes.append(PrometheusProbe.from_spec(consumer))
        elif consumer.get("postgres") is not None:
            from keyrotor.probes.postgres import PostgresProbe

            probes.append(PostgresProbe.from_spec(consumer))
        elif consumer.get("target") is not None:
            from keyrotor.probes.target import TargetProbe

            if target is None:
                raise SpecError(f"spec.consumers[{consumer['name']}].target",
                                "asks the target, but spec.target is not set")
            probes.append(TargetProbe(consumer["name"], target))
        elif consumer.get("transit") is not None:
            from keyrotor.backends.vault import VaultTransit
            from keyrotor.probes.transit import TransitProbe

            if not isinstance(generator, VaultTransit):
                raise SpecError(f"spec.consumers[{consumer['name']}].transit",
                                "a transit round trip needs generator.vault.transit")
            probes.append(TransitProbe(consumer["name"], generator))
    return probes


def _next_rotation(spec: RotationSpec, state: RotationState,
                   ) -> tuple[datetime.datetime | None, datetime.datetime | None]:
    """When the current version falls due (the metric always carries it), and what the status
    shows: the same time, only while a rotation could start (idle, not suspended)."""
    due = next_rotation_time(every=spec.every, schedule=spec.schedule,
                             since=state.current_version_time)
    return due, None if state.rotating or spec.suspend else due


@dataclass
class Reconciler:
    api: Api
    clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC)
    prober: Prober = probe_all
    errors_in_a_row: int = 0
    # Slow motion for demos and crash tests: stay at least this long in each new phase.
    phase_pause: float = 0.0
    # Shared by every reconciler of one operator, so restarts of one workload coalesce.
    restarter: Restarter | None = None
    # The state last decided, with the resourceVersion it belongs to: between status writes
    # (which skip what changes every probe round) it carries the round counters.
    memory: tuple[str, RotationState] | None = None
    # Whether the delay last returned is a slow-motion pause (which a wake-up must not cut).
    pausing: bool = False
    # The Secret watch's view, shared by every reconciler (None: no drift check but SlotError).
    secrets: SecretCache | None = None
    # The audit trail (None: not audited, e.g. the reconciler tier's tests).
    audit: Audit | None = None
    # Judges emergency revocation approvals (None: revoke-now requests are ignored).
    approvals: ApprovalJudge | None = None
    # RotationApprovals arrived (the operator's watch of them says so) and none was judged
    # since: judged even when no request is open, so a stray one never lingers with its code.
    # Without it, a reconcile lists approvals only while a request is open.
    approvals_waiting: bool = False

    async def reconcile(self, namespace: str, name: str,
                        body: dict[str, Any] | None = None) -> float:
        """Reconcile once; return the seconds after which the next reconcile is due.

        ``body`` is the object as a watch just delivered it, saving a GET; if it is stale, the
        status write's resourceVersion precondition fails and the next reconcile reads afresh.
        """
        self.pausing = False
        try:
            if body is None:
                body = await asyncio.to_thread(self.api.get_rotating_secret, namespace, name)
        except Exception as exc:  # the API server away or forbidding: nowhere to report it
            log.warning("%s/%s: reading the RotatingSecret failed: %s", namespace, name, exc)
            metrics.RECONCILE_ERRORS.labels(namespace, name, getattr(
                exc, "reason", type(exc).__name__)).inc()
            metrics.DEGRADED.labels(namespace, name).set(1)
            return ERROR_BACKOFF[0]
        if body is None or body["metadata"].get("deletionTimestamp"):
            return ERROR_RETRY
        try:
            delay = await self._reconcile(body)
        except Conflict:
            return 0.2  # someone wrote in between: read again and redo, soon
        except KeyrotorError as exc:
            return await self._failed(body, exc)
        except Exception as exc:
            # Unexpected: reported and backed off like any error, never escaping the loop.
            # The message names the type only; the traceback goes to the log.
            log.exception("%s/%s: unexpected error", body["metadata"].get("namespace"),
                          body["metadata"].get("name"))
            return await self._failed(body, InternalError(
                f"unexpected {type(exc).__name__}; the operator log has the details"))
        self.errors_in_a_row = 0
        return delay

    async def _failed(self, body: dict[str, Any], exc: KeyrotorError) -> float:
        """Report ``exc`` (its class carries the condition reason) and back off."""
        if isinstance(exc, PermissionDenied):
            metrics.PERMISSION_MISSING.labels(exc.namespace or "", exc.verb, exc.resource).set(1)
        try:
            await self._report_error(body, exc.reason, str(exc))
        except Exception as report_exc:  # e.g. no permission to write status or events
            log.error("%s/%s: %s: %s (and reporting it failed: %s)",
                      body["metadata"].get("namespace"), body["metadata"].get("name"),
                      exc.reason, exc, report_exc)
        # Exponential backoff with jitter: a hundred resources failing on one backend
        # spread their retries out instead of hammering it in step.
        first, ceiling = ERROR_BACKOFF
        self.errors_in_a_row += 1
        delay = min(first * 2.0 ** (self.errors_in_a_row - 1), ceiling)
        delay *= random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not crypto
        # API Priority and Fairness says when to come back (429 Retry-After): never sooner.
        return max(delay, getattr(exc, "retry_after", None) or 0.0)

    async def _reconcile(self, body: dict[str, Any]) -> float:
        meta, spec = body["metadata"], body.get("spec") or {}
        namespace, name = meta["namespace"], meta["name"]
        rspec = RotationSpec.parse(spec)
        # Building the adapters may read referenced Secrets (tokens, PINs, admin passwords)
        # with the blocking client: off the event loop, like every other blocking call.
        generator, target, probes = await asyncio.to_thread(self._adapters, namespace, name,
                                                            spec)
        owner = Owner(name=name, namespace=namespace, uid=meta["uid"],
                      garbage_collected=spec.get("deletionPolicy") == "Delete",
                      decoys=decoy_count(spec))
        state = self._state_of(body)
        annotations = meta.get("annotations") or {}
        trigger = annotations.get(TRIGGER_ANNOTATION)
        now = self.clock()
        secret_name = spec["secretName"]
        if state.current is not None and meta.get("generation") != \
                (body.get("status") or {}).get("observedGeneration"):
            await self._audit_config(body)

        request = annotations.get(REQUEST_ANNOTATION) or None
        expires = None
        if request and self.approvals is not None and state.phase != Phase.EMERGENCY and (
                state.emergency_request != request or state.emergency_result is None):
            judged = await self._judge_approvals(body, request)
            asked = approve(rspec, state, now=now, request=request, judged=judged)
            if asked.state != state or asked.events:
                await asyncio.to_thread(self._audit_approvals, body, request, judged)
                await asyncio.to_thread(self._audit_step, body, state, asked, None, None)
                await self._announce(body, asked.state, asked.events)
                due, shown = _next_rotation(rspec, asked.state)
                # With the time shown as the next reconcile will show it: else that one
                # writes the status again only to put nextRotationTime back.
                await self._persist(body, asked.state, now=now, error=None,
                                    next_rotation=shown)
                metrics.observe_state(namespace, name, asked.state,
                                      next_rotation=due.timestamp() if due else None,
                                      degraded=False)
                return 0.0 if asked.state.phase == Phase.EMERGENCY else 0.5
            expires = asked.requeue_after or None
        elif self.approvals_waiting and self.approvals is not None and \
                state.phase != Phase.EMERGENCY:
            # No request open: whatever arrived is rejected unverified (deleted, a Warning and
            # an audit line each), never left in the API server with its code. In
            # EmergencyRevoking it waits for the revocation to finish (next reconcile).
            await self._reject_strays(body, state, request,
                                      ended=state.emergency_result if request else None)

        if self.secrets is not None and state.phase in SETTLED and state.current is not None \
                and self.secrets.suspect((namespace, secret_name), published(state)):
            drift = await asyncio.to_thread(self._judge, secret_name, owner, state)
            if drift is not None:
                return await self._repair(body, state, drift, secret_name, owner, generator,
                                          target)

        probe = None
        version = probe_due(rspec, state, now)
        if version is not None:
            stage = state.stage
            restarts = (spec.get("rolloutRestartTargets") or []) if stage == "retirement" else []
            wanted = set(rspec.expected(stage))
            probe = await self._probe(spec["secretName"], owner,
                                      [p for p in probes if p.name in wanted], version, restarts)
            now = self.clock()
        # Steps that need no probe and no wait run on in this reconcile, and the state is
        # persisted once at the end: Idle→Generating→(stage)→VerifyingAcceptance is one status
        # write, not two. Safe because every effect is keyed by its version and idempotent: a
        # crash before the write replays the chain, allocates the same version again (the
        # Secret already holds it) and posts the same events (same names). In slow motion each
        # phase is persisted on its own, so it can be watched (the demo) and killed (tests).
        result: Step | None = None
        effects: list[Effect] = []
        for _ in range(8):
            held = None
            if state.phase in (Phase.PROMOTING, Phase.REVOKING):
                slots, _ = decode(await asyncio.to_thread(self.api.get_secret, namespace,
                                                          spec["secretName"]))
                held = {slot: v.version for slot, v in slots.filled().items()}
            result = step(rspec, state, now=now, trigger=trigger, probe=probe, held=held)
            # Audited before it is carried out (fail-closed): with an effect, from inside the
            # publish, once the new Secret (and so its fingerprints) is rendered but not written.
            audited = self._audit_step_later(body, state, result)
            if result.effect is None:
                await asyncio.to_thread(audited, None, None)
            if result.effect is not None:
                try:
                    await asyncio.to_thread(self._publish, result.effect, secret_name, owner,
                                            generator, target, audited)
                except SlotError:
                    # No current version to apply it to: judge the Secret, then repair it.
                    drift = await asyncio.to_thread(self._judge, secret_name, owner, state)
                    if drift is None:
                        raise
                    return await self._repair(body, state, drift, secret_name, owner,
                                              generator, target)
                effects.append(result.effect)
            # Each step's events under its own version: a chain may run from one rotation's
            # revocation into the next one's start.
            await self._announce(body, result.state, result.events)
            if self.phase_pause or result.requeue_after > 0 or result.state == state or \
                    probe_due(rspec, result.state, now) is not None:
                break
            if isinstance(result.effect, (Revoke, EmergencyRevoke)):
                # A rotation completed: persist it before the next one may start. A replay
                # after a conflict (a spec edit, say suspend) then never re-decides a chain
                # whose next rotation already staged a version the status does not record.
                break
            state, probe = result.state, None
        assert result is not None
        if not effects and state.current is not None and meta.get("generation") != \
                (body.get("status") or {}).get("observedGeneration"):
            # The spec changed (deletionPolicy, say): the Secret's owner marks may have to.
            await asyncio.to_thread(self._remark, spec["secretName"], owner)
        due, shown = _next_rotation(rspec, result.state)
        # Events before the status: a crash in between replays the step, and the replay's
        # events carry the same names, so each transition is posted exactly once.
        try:
            await self._persist(body, result.state, now=now, error=None, next_rotation=shown)
        except Conflict:
            if not effects:
                raise  # nothing was done: read again and decide again
            await self._persist_done(body, result.state, now=now, next_rotation=shown)
        self._observe(body, result.state, effects, due)
        if result.state.phase != state.phase and self.phase_pause:
            self.pausing = result.requeue_after <= self.phase_pause
            return max(result.requeue_after, self.phase_pause)
        if self.approvals_waiting and self.approvals is not None:
            return min(result.requeue_after, 1.0)  # approvals that arrived in EmergencyRevoking
        if expires is not None:  # an emergency request expires then, if nothing else wakes it
            return min(result.requeue_after, expires) if result.requeue_after else expires
        return result.requeue_after

    async def _judge_approvals(self, body: dict[str, Any], request: str | None, *,
                               ended: str | None = None) -> tuple[Approval, ...]:
        """Judge (and delete) every RotationApproval of this object: afterwards none waits."""
        assert self.approvals is not None
        meta = body["metadata"]
        judged = await asyncio.to_thread(self.approvals.judge, meta["namespace"], meta["name"],
                                         request, ended=ended)
        self.approvals_waiting = False
        return tuple(Approval(j.approver, j.ok, j.reason, j.message) for j in judged)

    async def _reject_strays(self, body: dict[str, Any], state: RotationState,
                             request: str | None, *, ended: str | None) -> None:
        """Judge the RotationApprovals that arrived while no request is open: ``request`` is
        the annotated id (None: none), ``ended`` how that request ended. The judge deletes
        and rejects them without checking their codes; each gets the Warning and the audit
        line of a rejected approval. Nothing in ``state`` changes."""
        judged = await self._judge_approvals(body, request, ended=ended)
        if not judged:
            return
        await asyncio.to_thread(self._audit_approvals, body, request, judged)
        await self._announce(body, state, tuple(rejection(a) for a in judged))

    # ---- audit -------------------------------------------------------------------------------

    def _audit_step_later(self, body: dict[str, Any], before: RotationState,
                          result: Step) -> Callable[[dict[str, Any] | None,
                                                     dict[str, Any] | None], None]:
        def record(old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
            self._audit_step(body, before, result, old, new)
        return record

    def _audit_step(self, body: dict[str, Any], before: RotationState, result: Step,
                    old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        """One audit line per event of ``result`` that the trail records. Blocking."""
        if self.audit is None:
            return
        meta = body["metadata"]
        state = result.state
        for event in result.events:
            action = provenance.ACTIONS.get(event.reason)
            if action is None or action in provenance.APPROVAL_ACTIONS:
                continue  # approvals: recorded with their approver by _audit_approvals
            actor = provenance.OPERATOR
            detail: dict[str, Any] = {"message": event.message}
            if event.reason == "RotationStarted" and state.last_trigger != before.last_trigger:
                manager = provenance.manager_of(meta, "metadata", "annotations",
                                                TRIGGER_ANNOTATION)
                actor = f"manager:{manager}" if manager else "unknown"
                self.audit.record(action=Action.MANUAL_TRIGGER, actor=actor,
                                  namespace=meta["namespace"], name=meta["name"],
                                  uid=meta.get("uid", ""), detail={"trigger": state.last_trigger},
                                  key=f"{meta.get('uid')}/{Action.MANUAL_TRIGGER}/v{state.latest}")
            if event.reason.startswith("Emergency") and state.approved_by:
                actor = "approvers:" + ",".join(state.approved_by)
            versions = {slot: v for slot, v in (("current", state.current),
                                               ("previous", state.previous),
                                               ("next", state.next)) if v is not None}
            if state.revoking:
                detail["revoking"] = list(state.revoking)
            once = event.once_per_version
            self.audit.record(
                action=action, actor=actor, namespace=meta["namespace"], name=meta["name"],
                uid=meta.get("uid", ""), versions=versions,
                fingerprints=provenance.fingerprints(old, new), detail=detail,
                key=f"{meta.get('uid')}/{action}/v{state.latest}" if once else None)

    def _audit_approvals(self, body: dict[str, Any], request: str | None,
                         judged: tuple[Approval, ...]) -> None:
        """Each judged approval, accepted or not, under its approver's name. Blocking."""
        if self.audit is None:
            return
        meta = body["metadata"]
        for a in judged:
            self.audit.record(action=provenance.ACTIONS[a.event_reason],
                              actor=f"approver:{a.approver}",
                              namespace=meta["namespace"], name=meta["name"],
                              uid=meta.get("uid", ""),
                              detail={"request": request, "reason": a.reason,
                                      "message": a.message})

    async def _audit_config(self, body: dict[str, Any]) -> None:
        """A spec change (a new generation) on record, with the manager that made it."""
        if self.audit is None:
            return
        meta = body["metadata"]
        manager = provenance.manager_of(meta, "spec")
        await asyncio.to_thread(
            self.audit.record, action=Action.CONFIG_CHANGED,
            actor=f"manager:{manager}" if manager else "unknown",
            namespace=meta["namespace"], name=meta["name"], uid=meta.get("uid", ""),
            detail={"generation": meta.get("generation")},
            key=f"{meta.get('uid')}/config/{meta.get('generation')}")

    @property
    def busy(self) -> bool:
        """Whether this reconciler remembers something its object's status does not: round
        counters mid-rotation, or a backoff. An idle one may be dropped and made anew."""
        return self.errors_in_a_row > 0 or (
            self.memory is not None and self.memory[1].phase != Phase.IDLE)

    # ---- drift ------------------------------------------------------------------------------

    def _judge(self, secret_name: str, owner: Owner,
               state: RotationState) -> tuple[str, dict[str, int]] | None:
        """Read the Secret afresh: (what is wrong, what it still holds intact) or None when it
        is as ``state`` says. Blocking."""
        secret = self.api.get_secret(owner.namespace, secret_name)
        where = f"Secret {owner.namespace}/{secret_name}"
        if secret is None:
            return f"{where} was deleted", {}
        check_owner(secret, owner, secret_name)
        held, problems = inspect(secret, owner, secret_name)
        want = published(state)
        if drifted(state, held):  # the engine's call: a Secret ahead of its status is not
            shown = ", ".join(f"{slot} {v}" for slot, v in held.items()) or "none"
            problems.append(f"it holds versions ({shown}) where the status says (" + ", ".join(
                f"{slot} {v}" for slot, v in want.items()) + ")")
        if not problems:
            if self.secrets is not None:
                self.secrets.checked((owner.namespace, secret_name),
                                     str(secret["metadata"].get("resourceVersion", "")))
            return None
        return f"{where}: " + "; ".join(problems), held

    async def _repair(self, body: dict[str, Any], state: RotationState,
                      drift: tuple[str, dict[str, int]], secret_name: str, owner: Owner,
                      generator: Generator, target: Target | None) -> float:
        """Carry out the engine's repair; report Degraded (SecretDrift) and one Warning."""
        found, held = drift
        now = self.clock()
        fix = repair(state, now=now, held=held, recoverable=recoverable(generator), found=found)
        if fix.effect is not None:
            await asyncio.to_thread(self._publish, fix.effect, secret_name, owner, generator,
                                    target)
        message = fix.events[0].message if fix.events else found
        log.warning("%s/%s: %s: %s", owner.namespace, owner.name, Reason.SECRET_DRIFT, message)
        metrics.RECONCILE_ERRORS.labels(owner.namespace, owner.name, Reason.SECRET_DRIFT).inc()
        await self._announce(body, fix.state, fix.events)
        await self._persist(body, fix.state, now=now, error=(Reason.SECRET_DRIFT, message),
                            next_rotation=None)
        metrics.observe_state(owner.namespace, owner.name, fix.state, next_rotation=None,
                              degraded=True)
        return fix.requeue_after

    # ---- steps -------------------------------------------------------------------------------

    async def _probe(self, secret_name: str, owner: Owner, probes: list[Probe],
                     version: int, restarts: list[dict[str, Any]]) -> ProbeRound:
        secret = await asyncio.to_thread(self.api.get_secret, owner.namespace, secret_name)
        slots, _ = decode(secret)
        values = {slot: slot_text(held.material) for slot, held in slots.filled().items()}
        candidate = next((held for held in slots.filled().values() if held.version == version),
                         None)
        if candidate is None:
            # The Secret lost the version under test (edited by hand?): that round fails.
            return ProbeRound(version=version, results=tuple(
                ConsumerResult(p.name, False, f"version {version} is not in the Secret")
                for p in probes))
        values["candidate"] = slot_text(candidate.material)
        values["candidate_version"] = str(version)
        if slots.previous is not None:
            values["previous_version"] = str(slots.previous.version)
        if USERNAME in candidate.material:
            values["candidate_username"] = candidate.material[USERNAME].decode()
        results = list(await self.prober(probes, values))
        for workload in restarts:
            if self.restarter is None:
                raise SpecError("spec.rolloutRestartTargets",
                                "this operator runs without rollout restarts")
            results.append(await self.restarter.check(owner.namespace, workload, owner.name,
                                                      version))
        for r in results:
            outcome = "success" if r.ok else "failure"
            metrics.PROBES.labels(owner.namespace, owner.name, r.name, outcome).inc()
            if not r.ok:
                metrics.PROBE_FAILURES.labels(owner.namespace, owner.name, r.name).inc()
        return ProbeRound(version=version, results=tuple(results))

    def _adapters(self, namespace: str, name: str, spec: dict[str, Any],
                  ) -> tuple[Generator, Target | None, list[Probe]]:
        """The generator, target and probes for ``spec``. Blocking."""
        ctx = Context(namespace=namespace, name=name,
                      read_secret_key=self._secret_reader(namespace))
        keep = int((spec.get("revocation") or {}).get("keepHistory", 0))
        generator = from_spec(spec.get("generator") or {}, ctx, keep_history=keep)
        target = target_from_spec(spec.get("target"), ctx)
        return generator, target, _probes(spec.get("consumers") or (), generator, target)

    def _secret_reader(self, namespace: str) -> Callable[[str, str], bytes]:
        """Reads keys of Secrets for one reconcile; each Secret is fetched once (a postgres
        target reads the user name and the password from the same one)."""
        fetched: dict[str, dict[str, Any] | None] = {}

        def read(name: str, key: str) -> bytes:
            if name not in fetched:
                fetched[name] = self.api.get_secret(namespace, name)
            return _secret_key(namespace, name, key, fetched[name])

        return read

    def _publish(self, effect: Effect, secret_name: str, owner: Owner,
                 generator: Generator, target: Target | None,
                 audited: Callable[[dict[str, Any] | None, dict[str, Any] | None], None]
                 | None = None) -> None:
        def make(version: int) -> Material:
            material = generator.generate(version)
            if target is None:
                return material
            material = target.describe(version, material)
            # Issue and Stage need the target to accept the version before any consumer
            # sees it; OneKey's PromoteTo hands it to presenters first (Activate swaps later).
            if isinstance(effect, (Issue, Stage, EmergencyRevoke)) or (
                    isinstance(effect, Republish) and version == effect.fresh):
                target.activate(version, material)
            return material

        for _ in range(5):
            current = self.api.get_secret(owner.namespace, secret_name)
            rendered = render(effect, current, name=secret_name, owner=owner, generate=make)
            if audited is not None:
                audited(current, rendered)  # AuditUnavailable: nothing written, nothing revoked
                audited = None
            try:
                if rendered is not None:
                    self._write(rendered, owner, create=current is None)
                break
            except Conflict:
                continue  # re-read; the effect is idempotent
        else:
            raise Conflict(f"Secret {owner.namespace}/{secret_name} kept changing")
        if isinstance(effect, Activate) and target is not None:
            slots, _ = decode(current)  # Activate leaves the Secret as read just above
            if slots.current is None or slots.current.version != effect.version:
                raise SlotError(f"version {effect.version} is not current in Secret "
                                f"{secret_name}; refusing to activate it at the target")
            target.activate(effect.version, slots.current.material)
        if isinstance(effect, Revoke):
            # Out of the Secret first, then out of the backend: no consumer is ever handed a
            # reference to a destroyed key. Replays are harmless (both steps are idempotent).
            generator.revoke(effect.version)
            if target is not None:
                target.revoke(effect.version)
        if isinstance(effect, EmergencyRevoke):
            for version in effect.revoke:  # out of the Secret above; now out of everything
                generator.revoke(version)
                if target is not None:
                    target.revoke(version)

    def _remark(self, secret_name: str, owner: Owner) -> None:
        """Rewrite the Secret's ownerReference and owner annotation if the policy changed."""
        current = self.api.get_secret(owner.namespace, secret_name)
        if current is None or owner.marked_on(current):
            return
        slots, key = decode(current)
        check_owner(current, owner, secret_name)
        if key is not None:
            self._write(encode(slots, name=secret_name, owner=owner, base=current,
                               fingerprint_key=key), owner, create=False)

    def _write(self, body: dict[str, Any], owner: Owner, *, create: bool) -> None:
        """Write the Secret and tell the Secret watch it was keyrotor. Blocking."""
        key = (owner.namespace, body["metadata"]["name"])
        if self.secrets is not None:
            self.secrets.writing(key)
        version = None
        try:
            version = self.api.write_secret(body, create=create)
        finally:
            if self.secrets is not None:
                self.secrets.wrote(key, version, owner.name)

    async def _persist(self, body: dict[str, Any], state: RotationState, *,
                       now: datetime.datetime, error: tuple[str, str] | None,
                       next_rotation: datetime.datetime | None) -> None:
        meta = body["metadata"]
        old = body.get("status") or {}
        status = status_io.to_status(state)
        status["nextRotationTime"] = status_io.ts(next_rotation)
        status["observedGeneration"] = meta.get("generation")
        status["conditions"] = status_io.conditions(
            state, now=now, generation=meta.get("generation"), error=error,
            existing=old.get("conditions"))
        version = meta.get("resourceVersion")
        if status_io.worth_writing(old, status):
            written = await asyncio.to_thread(self.api.patch_status, meta["namespace"],
                                              meta["name"], status, resource_version=version)
            version = (written.get("metadata") or {}).get("resourceVersion")
        self.memory = (version, state) if version else None

    async def _persist_done(self, body: dict[str, Any], state: RotationState, *,
                            now: datetime.datetime,
                            next_rotation: datetime.datetime | None) -> None:
        """The status write after effects were carried out met a conflict. If only the spec or
        the metadata changed (a suspend, an annotation), the effects still happened: record
        them, or a replay under the new spec would decide differently (a suspended object
        going Idle with a version staged in its Secret and at its target, unrecorded). If
        someone else wrote the status, raise: read again."""
        meta = body["metadata"]
        fresh = await asyncio.to_thread(self.api.get_rotating_secret, meta["namespace"],
                                        meta["name"])
        if fresh is None or fresh["metadata"].get("uid") != meta.get("uid") or \
                (fresh.get("status") or {}) != (body.get("status") or {}):
            raise Conflict(f"the status of {meta['namespace']}/{meta['name']} changed")
        again = {**body, "metadata": {**meta, "resourceVersion": fresh["metadata"].get(
            "resourceVersion")}}
        await self._persist(again, state, now=now, error=None, next_rotation=next_rotation)

    async def _persist_degraded(self, body: dict[str, Any], reason: str, message: str) -> None:
        """Only the Degraded condition, on a status the engine cannot read."""
        meta = body["metadata"]
        old = [c for c in (body.get("status") or {}).get("conditions") or ()
               if isinstance(c, dict) and c.get("type") != "Degraded"]
        degraded = {"type": "Degraded", "status": "True", "reason": reason, "message": message,
                    "lastTransitionTime": status_io.ts(self.clock()),
                    "observedGeneration": meta.get("generation")}
        await asyncio.to_thread(self.api.patch_status, meta["namespace"], meta["name"],
                                {"conditions": [*old, degraded]},
                                resource_version=meta.get("resourceVersion"))

    def _state_of(self, body: dict[str, Any]) -> RotationState:
        """The state from memory while nobody wrote the object since; else from its status
        (after a restart, or when someone else wrote)."""
        version, stored = body["metadata"].get("resourceVersion"), body.get("status") or {}
        if self.memory is not None and (self.memory[0] == version or status_io.holds_state(
                stored, self.memory[1])):
            # Nobody wrote since, or only the metadata (an annotation): memory is current.
            return self.memory[1]
        return status_io.from_status(stored)

    async def _announce(self, body: dict[str, Any], state: RotationState,
                        events: tuple[Event, ...]) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        for event in events:
            log.info("%s/%s: %s: %s", namespace, name, event.reason, event.message)
            # RotatingSecret, its uid (a re-created one starts at version 1 again), reason and
            # the version under rotation: the same step always gets the same name.
            key = f"{name[:200]}.{meta['uid'][:8]}.{event.reason.lower()}.v{state.latest}" \
                if event.once_per_version else None
            if key and event.once_per_phase:
                key += f".{state.stage}"
            await asyncio.to_thread(self.api.post_event, body, type=event.type,
                                    reason=event.reason, message=event.message, name=key)

    def _observe(self, body: dict[str, Any], state: RotationState, effects: list[Effect],
                 due: datetime.datetime | None) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if any(isinstance(effect, Revoke) for effect in effects):
            metrics.REVOCATIONS.labels(namespace, name).inc()
            metrics.ROTATIONS.labels(namespace, name, "succeeded").inc()
            started = status_io.parse_ts((body.get("status") or {}).get("rotationStartTime"))
            if started is not None and state.last_rotation_time is not None:
                metrics.ROTATION_DURATION.labels(namespace, name).observe(
                    (state.last_rotation_time - started).total_seconds())
        metrics.observe_state(namespace, name, state,
                              next_rotation=due.timestamp() if due else None,
                              degraded=state.phase == "Holding")

    async def _report_error(self, body: dict[str, Any], reason: str, message: str) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        metrics.RECONCILE_ERRORS.labels(namespace, name, reason).inc()
        metrics.DEGRADED.labels(namespace, name).set(1)
        old = body.get("status") or {}
        degraded: dict[str, Any] = next(
            (c for c in old.get("conditions") or () if c.get("type") == "Degraded"), {})
        try:
            state = self._state_of(body)
        except status_io.StatusError:
            # The status itself is what is wrong: report on its conditions only, and leave
            # the rest as it is (rewriting it from a blank state could reuse versions).
            state = None
        try:
            if state is not None:
                await self._persist(body, state, now=self.clock(), error=(reason, message),
                                    next_rotation=None)
            else:
                await self._persist_degraded(body, reason, message)
        except Conflict:
            return
        if degraded.get("reason") != reason or degraded.get("message") != message:
            log.warning("%s/%s: %s: %s", namespace, name, reason, message)
            await asyncio.to_thread(self.api.post_event, body, type="Warning", reason=reason,
                                    message=message)
