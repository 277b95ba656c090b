"""Event-loop lag probe: how late the operator's asyncio loop runs what is due.

A task sleeps ``interval`` seconds over and over and records how much later than asked it woke
up (``keyrotor_event_loop_lag_seconds``). Anything that holds the loop (blocking I/O, CPU work
such as generating an RSA key on the loop) shows up as lag, and delays every other
RotatingSecret by as much. Costs one wake-up per interval (10 per second by default).

``keyrotor run`` starts it on the operator's loop (``task = looplag.start()``) and cancels the
task when stopping. :func:`enabled` reads ``KEYROTOR_LOOP_LAG`` for the benchmarks' wrapper,
which predates that.
"""

from __future__ import annotations

import asyncio
import os

from prometheus_client import Histogram

from keyrotor.metrics import REGISTRY

ENV = "KEYROTOR_LOOP_LAG"
LAG = Histogram(
    "keyrotor_event_loop_lag_seconds",
    "How much later than scheduled the event loop woke a sleeping probe task",
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


def enabled() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes")


async def probe(interval: float = 0.1) -> None:
    """Measure forever (until cancelled): each sleep's overshoot beyond ``interval``."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time()
        await asyncio.sleep(interval)
        LAG.observe(max(0.0, loop.time() - asked - interval))


def start(interval: float = 0.1) -> asyncio.Task[None]:
    """Start the probe on the running loop; the caller cancels the returned task."""
    return asyncio.get_running_loop().create_task(probe(interval), name="keyrotor-looplag")
