"""A deleted or hand-edited Secret: noticed through the metadata-only watch's cache (no GET per
reconcile), repaired (re-published where the backend still holds the version, else a new
version), reported as Degraded SecretDrift with one Warning event. Table-driven over what
interferes; the stand-in API reports each Secret change to the cache as the watch would."""

from __future__ import annotations

import base64
import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from keyrotor.engine.model import Phase, Republish, Revoke, RotationState, Stage
from keyrotor.engine.rotation import published, repair
from keyrotor.publishing.secret import Owner, render
from keyrotor.publishing.slots import SlotError
from keyrotor.reconciler import Reconciler
from keyrotor.secretwatch import METADATA_LIST, METADATA_ONLY, SecretCache, list_metadata
from tests.reconciler.fakeapi import NS, FakeApi
from tests.reconciler.test_reconciler import ROTATE, TWO_KEYS, Clock, Prober, idle_at, run, versions


@dataclass
class Watched:
    api: FakeApi = field(default_factory=FakeApi)
    clock: Clock = field(default_factory=Clock)
    woken: list[tuple[str, str]] = field(default_factory=list)
    cache: SecretCache = field(init=False)

    def __post_init__(self) -> None:
        self.cache = SecretCache(wake=self.woken.append)
        self.cache.replace("", [])  # the first list: nothing yet
        self.api.watchers.append(self.cache.observe)

    def reconciler(self, prober: Prober | None = None) -> Reconciler:
        return Reconciler(api=self.api, clock=self.clock, prober=prober or Prober(),
                          secrets=self.cache)


def degraded(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Degraded")


def drift_events(api: FakeApi) -> list[dict[str, Any]]:
    return [e for e in api.events.values() if e["reason"] == "SecretDrift"]


def deleted(w: Watched) -> None:
    w.api.delete_secret_by_hand("k")


def value_edited(w: Watched) -> None:
    w.api.edit_secret_by_hand("k", current=b"hunter2")


def versions_json_edited(w: Watched) -> None:
    w.api.edit_secret_by_hand("k", **{"versions.json": b'{"current": 9}'})


@pytest.mark.parametrize(("interfere", "current", "found"), [
    (deleted, 2, "was deleted"),
    (value_edited, 2, "the value of slot current (version 1) was edited"),
    # The value is intact: the same version is re-published, no new one.
    (versions_json_edited, 1, "keys versions.json were edited"),
], ids=["deleted", "value edited", "versions.json edited"])
async def test_idle_secret_drift_is_repaired_and_reported_once(
        interfere: Callable[[Watched], None], current: int, found: str) -> None:
    w = Watched()
    w.api.add("k", TWO_KEYS)
    r = w.reconciler()
    await run(r, w.clock, "k", idle_at(1))
    before = w.api.secrets["k"]["data"]["current"]
    # Idle and sound: reconciles read nothing but the object (the cache says all is well).
    gets: list[str] = []
    real_get = w.api.get_secret
    w.api.get_secret = lambda ns, name: gets.append(name) or real_get(ns, name)  # type: ignore[method-assign]
    await r.reconcile(NS, "k")
    assert gets == []

    interfere(w)
    assert w.woken == [(NS, "k")]  # the watch wakes the RotatingSecret
    w.clock.advance(1)
    await r.reconcile(NS, "k")
    status = w.api.status("k")
    assert gets == ["k", "k"]  # judged once, then read again to write it
    assert status["currentVersion"] == current and status["latestVersion"] == current
    assert status["phase"] == "Idle"
    assert (degraded(status)["status"], degraded(status)["reason"]) == ("True", "SecretDrift")
    assert found in degraded(status)["message"]
    assert versions(w.api, "k") == {"current": current}
    data = w.api.secrets["k"]["data"]
    assert (data["current"] == before) == (current == 1)
    assert base64.b64decode(data["current"]) != b"hunter2"
    [event] = drift_events(w.api)
    assert event["type"] == "Warning" and found in event["message"]

    # The next reconcile finds the Secret sound: Degraded clears, nothing else is written.
    w.api.writes.clear()
    w.clock.advance(5)
    await r.reconcile(NS, "k")
    status = w.api.status("k")
    assert degraded(status)["status"] == "False"
    assert w.api.writes["update secrets"] == 0 and w.api.writes["create secrets"] == 0
    assert len(drift_events(w.api)) == 1


async def test_next_edited_mid_rotation_is_staged_anew() -> None:
    w = Watched()
    w.api.add("k", TWO_KEYS)
    r = w.reconciler()
    await run(r, w.clock, "k", idle_at(1))
    w.api.edit("k", **{ROTATE: "now"})
    await run(r, w.clock, "k", lambda s: s.get("phase") == "VerifyingAcceptance")
    assert versions(w.api, "k") == {"current": 1, "next": 2}
    w.api.edit_secret_by_hand("k", next=b"not-what-keyrotor-staged")
    w.clock.advance(1)
    await r.reconcile(NS, "k")
    status = w.api.status("k")
    assert status["phase"] == "VerifyingAcceptance"
    assert (status["currentVersion"], status["nextVersion"], status["latestVersion"]) == (1, 3, 3)
    assert versions(w.api, "k") == {"current": 1, "next": 3}
    [event] = drift_events(w.api)
    assert "staged version 3 as next" in event["message"]
    status = await run(r, w.clock, "k", lambda s: s.get("rotationCount") == 1)
    assert status["currentVersion"] == 3 and degraded(status)["status"] == "False"
    assert versions(w.api, "k") == {"current": 3}


async def test_effect_against_a_missing_secret_never_writes_a_partial_one() -> None:
    """Without the watch (no cache), the Secret deleted while Idle, then a rotation: staging
    finds no current version, raises SlotError instead of writing a Secret holding only
    ``next``, and the same repair follows (version 2 was allocated, so 3 is issued)."""
    api, clock = FakeApi(), Clock()
    written: list[dict[str, Any]] = []
    api.watchers.append(lambda kind, meta: written.append(
        dict(meta.get("annotations") or {})) if kind != "DELETED" else None)
    api.add("k", TWO_KEYS)
    r = Reconciler(api=api, clock=clock, prober=Prober())
    await run(r, clock, "k", idle_at(1))
    api.delete_secret_by_hand("k")
    api.edit("k", **{ROTATE: "now"})
    status = await run(r, clock, "k", lambda s: s.get("currentVersion") == 3)
    assert status["currentVersion"] == 3 and status["latestVersion"] == 3
    assert degraded(status)["reason"] == "SecretDrift"
    assert versions(api, "k") == {"current": 3}
    assert all("keyrotor.io/current-version" in a for a in written), written
    assert len(drift_events(api)) == 1


@pytest.mark.parametrize("effect", [Stage(2), Revoke(1)], ids=["stage", "revoke"])
def test_render_refuses_a_secret_without_current(effect: Stage | Revoke) -> None:
    owner = Owner(name="k", namespace=NS, uid="uid-k")
    with pytest.raises(SlotError) as raised:
        render(effect, None, name="k", owner=owner, generate=lambda v: {"": b"x"})
    assert raised.value.reason == "SecretDrift"


NOW = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC)


@pytest.mark.parametrize(("state", "held", "recoverable", "effect", "after"), [
    # A backend that holds the versions: re-published as they were, nothing new.
    (RotationState(current=4, latest=4), {}, True, Republish(current=4), (4, None, None)),
    (RotationState(phase=Phase.VERIFYING_ACCEPTANCE, current=4, next=5, latest=5), {}, True,
     Republish(current=4, next=5), (4, 5, None)),
    # Local material: a lost current is replaced by latest+1, the rotation ends.
    (RotationState(phase=Phase.VERIFYING_RETIREMENT, current=5, previous=4, latest=5), {},
     False, Republish(current=6, fresh=6), (6, None, None)),
    # Only the previous lost: dropped, the rotation goes on.
    (RotationState(phase=Phase.VERIFYING_RETIREMENT, current=5, previous=4, latest=5),
     {"current": 5}, False, Republish(current=5), (5, None, None)),
], ids=["vault idle", "vault staged", "local current lost", "local previous lost"])
def test_engine_repair(state: RotationState, held: dict[str, int], recoverable: bool,
                       effect: Republish, after: tuple[int | None, ...]) -> None:
    fix = repair(state, now=NOW, held=held, recoverable=recoverable, found="gone")
    assert fix.effect == effect
    assert (fix.state.current, fix.state.next, fix.state.previous) == after
    assert fix.state.latest == max(state.latest, *after[:1])  # never reused, never lower
    assert [e.reason for e in fix.events] == ["SecretDrift"]
    assert published(fix.state) == {k: v for k, v in zip(("current", "next", "previous"),
                                                         after, strict=True) if v is not None}


def test_cache_wakes_on_foreign_changes_only() -> None:
    woken: list[tuple[str, str]] = []
    cache = SecretCache(wake=woken.append)
    meta = {"namespace": NS, "name": "s", "resourceVersion": "5",
            "labels": {"keyrotor.io/rotatingsecret": "k"},
            "annotations": {"keyrotor.io/current-version": "1"}}
    cache.replace(NS, [meta])  # the first list is trusted
    assert cache.suspect((NS, "s"), {"current": 1}) is None
    assert cache.suspect((NS, "s"), {"current": 2}) is not None
    cache.writing((NS, "s"))
    cache.observe("MODIFIED", {**meta, "resourceVersion": "6"})  # our own write's event
    cache.wrote((NS, "s"), "6", "k")
    assert woken == [] and cache.suspect((NS, "s"), {"current": 1}) is None
    cache.observe("MODIFIED", {**meta, "resourceVersion": "7"})  # someone else's
    assert woken == [(NS, "k")]
    assert cache.suspect((NS, "s"), {"current": 1}) == "someone else wrote it"
    cache.observe("DELETED", {**meta, "resourceVersion": "8"})
    assert woken == [(NS, "k")] * 2
    assert cache.suspect((NS, "s"), {"current": 1}) == "the Secret is gone"


def test_watch_requests_ask_for_metadata_only() -> None:
    """No Secret data enters the process through the watch: every list and watch request
    carries the PartialObjectMetadata Accept header and keyrotor's label selector."""
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    class Response:
        data = b'{"items": [{"metadata": {"name": "s"}}], "metadata": {"resourceVersion": "9"}}'

    class Core:
        def list_namespaced_secret(self, *args: Any, **kwargs: Any) -> Response:
            calls.append(("namespaced", args, kwargs))
            return Response()

        def list_secret_for_all_namespaces(self, **kwargs: Any) -> Response:
            calls.append(("all", (), kwargs))
            return Response()

    assert list_metadata(Core(), NS) == ([{"name": "s"}], "9")
    assert list_metadata(Core(), "") == ([{"name": "s"}], "9")
    from keyrotor.secretwatch import _request

    _request(Core(), NS, watch=True, resource_version="9")
    for _, _, kwargs in calls:
        assert kwargs["label_selector"] == "app.kubernetes.io/managed-by=keyrotor"
        assert kwargs["_preload_content"] is False
    assert [c[2]["_headers"]["Accept"] for c in calls] == [METADATA_LIST, METADATA_LIST,
                                                           METADATA_ONLY]
    assert [c[0] for c in calls] == ["namespaced", "all", "namespaced"]


async def test_a_secret_ahead_of_its_status_after_a_crash_is_no_drift() -> None:
    """A kill between a Secret write and the status write leaves the Secret a step ahead (a
    staged or promoted version, a revoked previous). The new process lists the Secrets afresh;
    the replay finishes the step: no SecretDrift, no version made twice."""
    w = Watched()
    w.api.add("k", TWO_KEYS)
    await run(w.reconciler(), w.clock, "k", idle_at(1))
    w.api.edit("k", **{ROTATE: "now"})

    def crash() -> None:
        raise SystemExit("killed")

    def restarted() -> Reconciler:
        w.api.watchers.clear()
        w.cache = SecretCache(wake=w.woken.append)
        w.cache.replace("", [dict(s["metadata"], namespace=NS) for s in w.api.secrets.values()])
        w.api.watchers.append(w.cache.observe)
        return w.reconciler()

    r, crashes, last_phase, staged = w.reconciler(), 0, None, set()
    for _ in range(300):
        phase = w.api.status("k").get("phase")
        if phase != last_phase:  # each new phase: its next status write is killed once
            last_phase = phase
            w.api.before["patch rotatingsecrets/status"] = crash
        try:
            delay = await r.reconcile(NS, "k")
        except SystemExit:
            crashes, r = crashes + 1, restarted()
            continue
        staged.add(w.api.secrets["k"]["data"].get("next"))
        w.clock.advance(max(delay, 0.001))
        if w.api.status("k").get("rotationCount") == 1:
            break
    assert w.api.status("k")["currentVersion"] == 2 and crashes >= 3
    assert drift_events(w.api) == []
    assert len(staged - {None}) == 1  # version 2's material made once


async def test_watch_resumes_from_its_resource_version_and_relists_on_410() -> None:
    """A watch that ends resumes from the last resourceVersion seen (bookmarks included); an
    expired one (410) lists again, and what went away in the gap wakes its owner."""
    import asyncio
    import json as jsonlib
    import threading

    from keyrotor.secretwatch import SecretWatch

    labels = {"keyrotor.io/rotatingsecret": "a"}
    lists = [[{"name": "a", "namespace": NS, "resourceVersion": "1", "labels": labels},
              {"name": "b", "namespace": NS, "resourceVersion": "2",
               "labels": {"keyrotor.io/rotatingsecret": "b"}}],
             [{"name": "a", "namespace": NS, "resourceVersion": "1", "labels": labels}]]
    watches = [
        [{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "5"}}}],
        [{"type": "ERROR", "object": {"code": 410, "message": "too old"}}],
    ]
    asked: list[dict[str, Any]] = []
    done = threading.Event()

    class Response:
        def __init__(self, body: bytes) -> None:
            self.data = body

        def stream(self, amt: int, decode_content: bool) -> Any:
            if not self.data:
                done.wait(5)  # the last watch: idle until the test ends
            yield self.data

        def release_conn(self) -> None:
            pass

    class Core:
        def list_namespaced_secret(self, namespace: str, **kwargs: Any) -> Response:
            asked.append(kwargs)
            if kwargs.get("watch"):
                lines = watches.pop(0) if watches else []
                return Response(b"".join(jsonlib.dumps(e).encode() + b"\n" for e in lines))
            items = lists.pop(0)
            return Response(jsonlib.dumps({"items": [{"metadata": m} for m in items],
                                           "metadata": {"resourceVersion": "3"}}).encode())

    woken: list[tuple[str, str]] = []
    cache = SecretCache(wake=woken.append)
    watch = SecretWatch(cache, Core(), (NS,))
    watch.start(asyncio.get_running_loop())
    try:
        for _ in range(200):
            if woken:
                break
            await asyncio.sleep(0.01)
    finally:
        watch.stop()
        done.set()
        await asyncio.to_thread(watch._threads[0].join, 5)
    assert [(a.get("watch"), a.get("resource_version")) for a in asked[:4]] == [
        (None, None), (True, "3"), (True, "5"), (None, None)]
    assert woken == [(NS, "b")]  # gone while the watch was away
    assert set(cache.views) == {(NS, "a")}
