"""One scheduler for every RotatingSecret: a heap of wake-up times and a bounded pool of workers.

A kopf daemon per object costs a task, its stopper and kopf's bookkeeping (about 107 KB each);
at ten thousand objects that was a gigabyte. Here an object that waits costs one heap entry and
one dict entry: kopf's watch tells the scheduler what exists and what changed, the scheduler
wakes each object when its engine asked to be looked at again, and at most ``workers``
reconciles run at once (so a burst of new objects queues instead of opening thousands of
connections).

Rules, each for a reason:

* One reconcile per object at a time. A wake-up that arrives while it runs is remembered and
  served right after, so an edit is never lost and never raced.
* The latest due time wins for an object that is not woken early: ``schedule`` replaces it.
  ``wake`` only moves it earlier.
* In slow motion (``--phase-pause``) a wake-up does not cut a pause short: the pause is the
  point of the demo and of the crash tests.
* A reconciler (with its in-memory round counters and backoff) is kept only while its object
  is busy: mid-rotation or failing. An idle object costs no more than its heap entry.

Time is injected (``monotonic``), and ``run_due`` is the one place that decides who runs next,
so tests drive the scheduler without real sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("keyrotor.scheduling")
Key = tuple[str, str]  # namespace, name


class Reconcile(Protocol):
    """One reconcile of one object; returns (seconds until the next one, keep my state?)."""

    def __call__(self, key: Key, hint: dict[str, Any] | None) -> Awaitable[tuple[float, bool]]:
        ...


@dataclass
class Scheduler:
    reconcile: Reconcile
    workers: int = 16
    monotonic: Callable[[], float] = time.monotonic
    _heap: list[tuple[float, int, Key]] = field(default_factory=list)
    _due: dict[Key, float] = field(default_factory=dict)
    _not_before: dict[Key, float] = field(default_factory=dict)
    _running: set[Key] = field(default_factory=set)
    _again: set[Key] = field(default_factory=set)  # woken while running
    _gone: set[Key] = field(default_factory=set)  # forgotten while running
    _hints: dict[Key, dict[str, Any]] = field(default_factory=dict)
    max_hints: int = 1000  # bodies kept for a burst at most: beyond, a reconcile GETs
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _ready: asyncio.Queue[Key] = field(default_factory=asyncio.Queue)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    # ---- what the watch tells ---------------------------------------------------------------

    def schedule(self, key: Key, delay: float) -> None:
        """Look at ``key`` after ``delay`` seconds (replacing an earlier plan)."""
        self._gone.discard(key)
        due = max(self.monotonic() + max(delay, 0.0), self._not_before.get(key, 0.0))
        self._due[key] = due
        heapq.heappush(self._heap, (due, next(self._seq), key))
        self._changed.set()

    def wake(self, key: Key, hint: dict[str, Any] | None = None) -> None:
        """Look at ``key`` now (or right after its running reconcile). ``hint`` is the body
        the watch just delivered: the reconcile may start from it instead of a GET."""
        self._gone.discard(key)
        if hint is not None and (key in self._hints or len(self._hints) < self.max_hints):
            self._hints[key] = hint
        if key in self._running:
            self._again.add(key)
            return
        due = self._due.get(key)
        now = max(self.monotonic(), self._not_before.get(key, 0.0))
        if due is None or due > now:
            self.schedule(key, 0.0)

    def forget(self, key: Key) -> None:
        """The object is gone: drop every trace (a stale heap entry is skipped later)."""
        for table in (self._due, self._not_before, self._hints):
            table.pop(key, None)
        self._again.discard(key)
        if key in self._running:
            self._gone.add(key)

    def __contains__(self, key: Key) -> bool:
        return key in self._due or key in self._running

    def __len__(self) -> int:
        return len(self._due)

    # ---- running ---------------------------------------------------------------------------

    def run_due(self) -> float | None:
        """Move every object that is due to the ready queue; the seconds until the next one
        falls due (None: nothing planned)."""
        now = self.monotonic()
        while self._heap:
            due, _, key = self._heap[0]
            if self._due.get(key) != due:  # replaced or forgotten: a stale entry
                heapq.heappop(self._heap)
                continue
            if due > now:
                return due - now
            heapq.heappop(self._heap)
            del self._due[key]
            self._running.add(key)
            self._ready.put_nowait(key)
        return None

    async def _timer(self) -> None:
        while True:
            self._changed.clear()
            wait = self.run_due()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=wait)

    async def _worker(self) -> None:
        while True:
            key = await self._ready.get()
            hint = self._hints.pop(key, None)
            try:
                delay, pause = await self.reconcile(key, hint)
            except Exception:  # the reconcile reports its own errors; this is a bug guard
                log.exception("%s/%s: reconcile crashed; retrying in 30s", *key)
                delay, pause = 30.0, False
            finally:
                self._running.discard(key)
            if key in self._gone:
                self._gone.discard(key)
                continue
            if pause:
                self._not_before[key] = self.monotonic() + delay
            else:
                self._not_before.pop(key, None)
            if key in self._again:
                self._again.discard(key)
                delay = 0.0  # woken while running: again at once (not before a pause ends)
            self.schedule(key, delay)

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._timer(), name="keyrotor-timer")]
        self._tasks += [asyncio.create_task(self._worker(), name=f"keyrotor-worker-{n}")
                        for n in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
