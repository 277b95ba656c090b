"""The scheduler's rules with a stand-in reconcile and an injected clock."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from keyrotor.scheduling import Key, Scheduler
from keyrotor.testing.waiting import wait_for


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Recorder:
    """A reconcile that records calls, asks for ``delay``, and can be held mid-run."""

    delay: float = 60.0
    pause: bool = False
    calls: list[tuple[Key, Any]] = field(default_factory=list)
    running: int = 0
    most_at_once: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, key: Key, hint: dict[str, Any] | None) -> tuple[float, bool]:
        self.calls.append((key, hint))
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        await self.gate.wait()
        self.running -= 1
        return self.delay, self.pause


async def settle(predicate: Any) -> None:
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("never settled")


async def test_due_order_and_bounded_workers() -> None:
    clock, work = Clock(), Recorder()
    s = Scheduler(work, workers=3, monotonic=clock)
    await s.start()
    try:
        for n in range(10):
            s.schedule(("ns", f"o{n}"), delay=float(10 - n))
        assert s.run_due() == 1.0  # nothing due yet; o9 in a second
        clock.now += 10
        s.run_due()
        await settle(lambda: work.running == 3)
        assert work.most_at_once == 3  # ten due, three workers
        assert [k[1] for k, _ in work.calls] == ["o9", "o8", "o7"]  # earliest first
        work.gate.set()
        await settle(lambda: len(work.calls) == 10)
        assert len(s) == 10  # each rescheduled 60 s out
        assert s.run_due() == 60.0
    finally:
        await s.stop()


async def test_wake_while_running_runs_again_and_forget_drops() -> None:
    clock, work = Clock(), Recorder()
    s = Scheduler(work, workers=2, monotonic=clock)
    await s.start()
    try:
        a, b = ("ns", "a"), ("ns", "b")
        s.wake(a, hint={"v": 1})
        s.wake(b)
        s.run_due()
        await settle(lambda: work.running == 2)
        s.wake(a, hint={"v": 2})  # an edit while a runs: served right after
        s.forget(b)  # b deleted while it runs: never again
        work.gate.set()
        await settle(lambda: len(work.calls) == 3)
        s.run_due()
        await settle(lambda: work.running == 0)
        assert work.calls == [(a, {"v": 1}), (b, None), (a, {"v": 2})]
        assert b not in s and a in s
    finally:
        await s.stop()


async def test_a_wake_does_not_cut_a_slow_motion_pause() -> None:
    clock, work = Clock(), Recorder(delay=5.0, pause=True)
    work.gate.set()
    s = Scheduler(work, workers=1, monotonic=clock)
    await s.start()
    try:
        key = ("ns", "slow")
        s.wake(key)
        s.run_due()
        await settle(lambda: len(work.calls) == 1 and key in s and work.running == 0)
        s.wake(key)  # mid-pause
        assert s.run_due() == 5.0
        clock.now += 5
        s.run_due()
        await settle(lambda: len(work.calls) == 2)
    finally:
        await s.stop()


async def test_timer_runs_objects_when_due_in_real_time() -> None:
    work = Recorder(delay=0.05)
    work.gate.set()
    s = Scheduler(work, workers=2)
    await s.start()
    try:
        s.wake(("ns", "t"))
        await asyncio.to_thread(wait_for, lambda: len(work.calls) >= 3, timeout=5,
                                what="three reconciles 50 ms apart")
    finally:
        await s.stop()
