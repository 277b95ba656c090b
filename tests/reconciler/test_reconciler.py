"""The reconciler in-process: a stand-in API with the server's conflict rules, an injected clock
and prober, so a day-long rotation runs in milliseconds. Table-driven where cases differ only in
what interferes, as cert-manager's controller tests are."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from keyrotor.engine.model import ConsumerResult
from keyrotor.errors import Conflict
from keyrotor.probes.http import Probe
from keyrotor.reconciler import ERROR_BACKOFF, Reconciler
from tests.reconciler.fakeapi import NS, FakeApi

START = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC)
ROTATE = "keyrotor.io/rotate"
TWO_KEYS = {"rotation": {"every": "720h", "minOverlap": "10m", "maxOverlap": "24h"},
            "verification": {"interval": "15s", "successesRequired": 3},
            "generator": {"random": {"length": 32}},
            "consumers": [{"name": "api", "http": {"url": "http://127.0.0.1:9/check"}}]}


@dataclass
class Clock:
    now: datetime.datetime = START

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)


@dataclass
class Prober:
    """Answers every probe with ``healthy``; counts rounds."""

    healthy: bool = True
    rounds: int = 0
    seen_versions: list[str] = field(default_factory=list)

    async def __call__(self, probes: Sequence[Probe],
                       values: dict[str, str]) -> tuple[ConsumerResult, ...]:
        self.rounds += 1
        self.seen_versions.append(values["candidate_version"])
        return tuple(ConsumerResult(p.name, self.healthy, "HTTP 200" if self.healthy
                                    else "HTTP 401") for p in probes)


def reconciler(api: FakeApi, clock: Clock, prober: Prober | None = None) -> Reconciler:
    return Reconciler(api=api, clock=clock, prober=prober or Prober())


async def run(r: Reconciler, clock: Clock, name: str,
              until: Callable[[dict[str, Any]], bool], *, steps: int = 200) -> dict[str, Any]:
    """Reconcile, advance the clock by the delay asked for, repeat until ``until(status)``."""
    api = r.api
    assert isinstance(api, FakeApi)
    for _ in range(steps):
        delay = await r.reconcile(NS, name)
        status = api.status(name)
        if until(status):
            return status
        clock.advance(max(delay, 0.001))
    raise AssertionError(f"not reached in {steps} reconciles: {api.status(name)}")


def versions(api: FakeApi, name: str) -> dict[str, int]:
    return json.loads(base64.b64decode(api.secrets[name]["data"]["versions.json"]))


def idle_at(version: int) -> Callable[[dict[str, Any]], bool]:
    return lambda s: s.get("currentVersion") == version and s.get("phase") == "Idle"


async def test_first_version_costs_two_writes_and_one_event() -> None:
    api, clock = FakeApi(), Clock()
    api.add("k", TWO_KEYS)
    status = await run(reconciler(api, clock), clock, "k", idle_at(1))
    assert status["latestVersion"] == 1
    # One chain of steps (Idle, Generating, issue, Idle): the Secret, then one status write.
    assert dict(api.writes) == {"create secrets": 1, "patch rotatingsecrets/status": 1,
                                "create events": 1}
    assert api.reasons() == ["Issued"]


async def test_full_rotation_writes_only_what_readers_need() -> None:
    """A day of TwoKeys rotation in milliseconds: three Secret writes (stage, promote, revoke),
    a status write per phase rather than per probe round, every step announced once."""
    api, clock, prober = FakeApi(), Clock(), Prober()
    api.add("k", TWO_KEYS)
    r = reconciler(api, clock, prober)
    await run(r, clock, "k", idle_at(1))
    api.writes.clear()
    api.events.clear()
    api.edit("k", **{ROTATE: "now"})
    status = await run(r, clock, "k", lambda s: s.get("rotationCount") == 1)
    assert status["currentVersion"] == 2 and status.get("previousVersion") is None
    assert api.writes["update secrets"] == 3
    assert prober.rounds >= 6  # three rounds to accept, three to retire at least
    # Steps that need no probe run on in one reconcile: stage + VerifyingAcceptance, promote +
    # VerifyingRetirement, revoke + Idle. Six writes, three of them the Secret's (the issue's
    # target: at most six); nothing per probe round.
    assert api.writes["patch rotatingsecrets/status"] == 3, api.writes
    print(dict(api.writes), "probe rounds:", prober.rounds)
    assert api.reasons() == ["RotationStarted", "Staged", "Accepted", "Promoted", "Retired",
                             "Revoked"]
    assert versions(api, "k") == {"current": 2}


async def test_restart_with_nothing_to_do_writes_nothing() -> None:
    api, clock = FakeApi(), Clock()
    api.add("k", TWO_KEYS)
    await run(reconciler(api, clock), clock, "k",
              lambda s: s.get("message", "").startswith("next rotation at"))
    api.writes.clear()
    clock.advance(3600)
    fresh = reconciler(api, clock)  # a new process: nothing in memory
    delay = await fresh.reconcile(NS, "k")
    assert delay == 3600  # idle: look again within the hour (the engine's ceiling)
    assert sum(api.writes.values()) == 0


@pytest.mark.parametrize("interfere", ["status conflict", "secret conflict"])
async def test_conflicts_are_redone_without_losing_or_skipping_a_version(
        interfere: str) -> None:
    api, clock = FakeApi(), Clock()
    api.add("k", TWO_KEYS)
    r = reconciler(api, clock)
    await run(r, clock, "k", idle_at(1))
    api.edit("k", **{ROTATE: "now"})

    def someone_writes() -> None:
        if interfere == "status conflict":
            api.edit("k", touched="yes")  # the object moved: the status patch gets 409
        else:
            raise Conflict("the Secret moved")

    hook = "patch rotatingsecrets/status" if interfere == "status conflict" else "update secrets"
    # Interfere with the first write of this kind in every other reconcile.
    seen: list[int] = []
    for n in range(60):
        if n % 2 == 0:
            api.before[hook] = someone_writes
        await r.reconcile(NS, "k")
        clock.advance(20)
        seen.append(versions(api, "k").get("next") or versions(api, "k")["current"])
        if api.status("k").get("rotationCount") == 1:
            break
    api.before.clear()
    status = await run(r, clock, "k", lambda s: s.get("rotationCount") == 1)
    assert status["currentVersion"] == 2 and status["latestVersion"] == 2
    assert max(seen) == 2  # version 2 reached, never 3: nothing allocated twice
    assert [r for r in api.reasons() if r == "Promoted"] == ["Promoted"]


async def test_crash_between_announcing_and_persisting_posts_each_event_once() -> None:
    """Events go out before the status write; a kill in between replays the step in a new
    process, whose event has the same name and is found posted."""
    api, clock = FakeApi(), Clock()
    api.add("k", TWO_KEYS)
    await run(reconciler(api, clock), clock, "k", idle_at(1))
    api.edit("k", **{ROTATE: "now"})
    def crash() -> None:
        raise SystemExit("killed")  # not an Exception: it escapes like a SIGKILL

    r, crashes, last_phase = reconciler(api, clock), 0, None
    for _ in range(300):
        phase = api.status("k").get("phase")
        if phase != last_phase:  # each new phase: its next status write is killed once
            last_phase = phase
            api.before["patch rotatingsecrets/status"] = crash
        try:
            delay = await r.reconcile(NS, "k")
        except SystemExit:
            crashes, r = crashes + 1, reconciler(api, clock)  # a new process takes over
            continue
        clock.advance(max(delay, 0.001))
        if api.status("k").get("rotationCount") == 1:
            break
    assert api.status("k")["currentVersion"] == 2 and crashes >= 3
    reasons = api.reasons()
    for reason in ("Staged", "Accepted", "Promoted", "Retired", "Revoked"):
        assert reasons.count(reason) == 1, (reason, reasons)


async def test_errors_back_off_and_name_the_field() -> None:
    api, clock = FakeApi(), Clock()
    api.add("k", {**TWO_KEYS, "rotation": {"every": "ten days"}})
    r = reconciler(api, clock)
    delays = [await r.reconcile(NS, "k") for _ in range(4)]
    first, _ = ERROR_BACKOFF
    for n, delay in enumerate(delays):
        assert first * 2 ** n * 0.8 <= delay <= first * 2 ** n * 1.2
    degraded = next(c for c in api.status("k")["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "InvalidSpec"
    assert "spec.rotation.every" in degraded["message"] and "720h" in degraded["message"]
    assert api.reasons() == ["InvalidSpec"]  # one Warning, not one per retry
    assert api.writes["patch rotatingsecrets/status"] == 1  # and one status write
    assert "k" not in api.secrets


async def test_unexpected_exception_is_reported_and_backed_off() -> None:
    api, clock = FakeApi(), Clock()
    api.add("k", TWO_KEYS)

    async def broken(probes: Sequence[Probe], values: dict[str, str]) -> tuple[()]:
        raise ZeroDivisionError("a bug")

    r = Reconciler(api=api, clock=clock, prober=broken)
    await run(r, clock, "k", idle_at(1))
    api.edit("k", **{ROTATE: "now"})
    delays = [await r.reconcile(NS, "k") for _ in range(6)]
    assert delays[-1] > delays[-2] > delays[-3] > 0, delays
    degraded = next(c for c in api.status("k")["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "InternalError" and "ZeroDivisionError" in degraded["message"]
    assert versions(api, "k")["current"] == 1  # the current key keeps working


async def test_missing_permission_is_named_and_nothing_lost() -> None:
    api, clock = FakeApi(), Clock()
    api.add("k", TWO_KEYS)
    r = reconciler(api, clock)
    await run(r, clock, "k", idle_at(1))
    api.denied.add(("update", "secrets"))
    api.edit("k", **{ROTATE: "now"})
    for _ in range(3):
        clock.advance(await r.reconcile(NS, "k"))
    degraded = next(c for c in api.status("k")["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "PermissionDenied"
    assert "may not update secrets in namespace ns" in degraded["message"]
    assert versions(api, "k") == {"current": 1}
    api.denied.clear()
    status = await run(r, clock, "k", lambda s: s.get("rotationCount") == 1)
    assert status["currentVersion"] == 2
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "False"


async def test_round_counters_survive_an_edit_of_the_metadata() -> None:
    """Round counters live in memory between status writes; an annotation written by someone
    else moves the resourceVersion but must not reset them (verification would never end on an
    object that is annotated often)."""
    api, clock, prober = FakeApi(), Clock(), Prober()
    api.add("k", TWO_KEYS)
    r = reconciler(api, clock, prober)
    await run(r, clock, "k", idle_at(1))
    api.edit("k", **{ROTATE: "now"})
    for _ in range(60):
        clock.advance(max(await r.reconcile(NS, "k"), 0.001))
        api.edit("k", **{"example.com/touched": str(clock.now)})
        if api.status("k").get("rotationCount") == 1:
            break
    assert api.status("k").get("rotationCount") == 1
    # As many rounds as without the edits: acceptance takes three, retirement goes on until
    # minOverlap (10 minutes of 15 s rounds). A reset would start acceptance over and again.
    undisturbed = FakeApi()
    undisturbed.add("k", TWO_KEYS)
    baseline, quiet = Prober(), Clock()
    r = reconciler(undisturbed, quiet, baseline)
    await run(r, quiet, "k", idle_at(1))
    undisturbed.edit("k", **{ROTATE: "now"})
    await run(r, quiet, "k", lambda s: s.get("rotationCount") == 1)
    assert prober.rounds <= baseline.rounds + 1, (prober.rounds, baseline.rounds)


async def test_api_server_asking_to_slow_down_is_respected() -> None:
    """A 429 from API Priority and Fairness carries Retry-After: the next try waits at least
    that long, and the object reads Degraded (ApiUnavailable) meanwhile."""
    from keyrotor.errors import ApiUnavailable

    api, clock = FakeApi(), Clock()
    api.add("k", TWO_KEYS)
    r = reconciler(api, clock)
    await run(r, clock, "k", idle_at(1))
    api.edit("k", **{ROTATE: "now"})

    def busy() -> None:
        raise ApiUnavailable("the API server answered 429", retry_after=40)

    api.before["update secrets"] = busy
    assert await r.reconcile(NS, "k") >= 40
    degraded = next(c for c in api.status("k")["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "ApiUnavailable"
    assert versions(api, "k") == {"current": 1}
    status = await run(r, clock, "k", lambda s: s.get("rotationCount") == 1)  # then it goes on
    assert status["currentVersion"] == 2


async def test_a_chain_from_one_rotation_into_the_next_names_each_event_by_its_version(
        ) -> None:
    """Rotations due back to back: one reconcile revokes version n and starts n+1. Each
    event keeps the name of its own version (a Revoked named after n+1 would be taken for a
    replay when n+1's own revocation comes, and lost)."""
    api, clock = FakeApi(), Clock()
    api.add("k", {**TWO_KEYS, "rotation": {"every": "1m", "minOverlap": "1m"},
                  "verification": {"interval": "10s", "successesRequired": 1}})
    r = reconciler(api, clock)
    await run(r, clock, "k", lambda s: (s.get("rotationCount") or 0) >= 4, steps=400)
    reasons = api.reasons()
    assert reasons.count("Revoked") == reasons.count("Promoted") >= 4
    revoked = sorted(n for n, e in api.events.items() if e["reason"] == "Revoked")
    assert len(set(revoked)) == len(revoked)


async def test_a_spec_edit_racing_a_staged_version_is_recorded_not_redecided() -> None:
    """A suspend lands between staging a version (Secret written) and the status write: the
    status write conflicts. The staged version happened, so it is recorded; a replay under
    the suspended spec must not go Idle with the version staged and unrecorded."""
    api, clock = FakeApi(), Clock()
    api.add("k", TWO_KEYS)
    r = reconciler(api, clock)
    await run(r, clock, "k", idle_at(1))

    def suspend() -> None:
        obj = api.objects["k"]
        obj["spec"]["rotation"]["suspend"] = True
        obj["metadata"]["generation"] += 1
        obj["metadata"]["resourceVersion"] = api._next()

    api.before["patch rotatingsecrets/status"] = suspend
    api.edit("k", **{ROTATE: "now"})
    await r.reconcile(NS, "k")
    status = api.status("k")
    assert versions(api, "k") == {"current": 1, "next": 2}
    assert status["phase"] == "VerifyingAcceptance" and status["nextVersion"] == 2
    # Suspend stops new rotations, not the one under way: it completes.
    status = await run(r, clock, "k", idle_at(2))
    assert status["rotationCount"] == 1 and versions(api, "k") == {"current": 2}


class OffLoopApi(FakeApi):
    """Fails any API call made on the event loop's thread (the real client blocks)."""

    on_loop: list[str]

    def __getattribute__(self, name: str) -> Any:
        attribute = super().__getattribute__(name)
        if name in ("get_rotating_secret", "patch_status", "get_secret", "write_secret",
                    "post_event"):
            def checked(*args: Any, **kwargs: Any) -> Any:
                try:
                    asyncio.get_running_loop()
                    object.__getattribute__(self, "on_loop").append(name)
                except RuntimeError:
                    pass  # a worker thread: no loop running here
                return attribute(*args, **kwargs)
            return checked
        return attribute


async def test_no_blocking_call_runs_on_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every API call, every Secret read while the adapters are built, and every key made:
    off the loop, so one slow call never stalls the other resources (issue 10, defect 2)."""
    api, clock = OffLoopApi(), Clock()
    api.on_loop = []
    built_on_loop: list[str] = []
    original = Reconciler._adapters

    def adapters(self: Reconciler, *args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            built_on_loop.append("adapters")
        except RuntimeError:
            pass
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Reconciler, "_adapters", adapters)
    api.add("rs", {**TWO_KEYS, "generator": {"keyPair": {"algorithm": "ECDSA-P256"}}})
    r = reconciler(api, clock)
    await run(r, clock, "rs", idle_at(1))
    api.edit("rs", **{ROTATE: "now"})
    await run(r, clock, "rs", idle_at(2))
    assert api.on_loop == [] and built_on_loop == []
    assert len(api.writes) > 0  # the calls did happen, off the loop
