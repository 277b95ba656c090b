"""Throughput and memory of the pure rotation engine: how many decisions per second one core
makes, and what one RotatingSecret's state costs, so operator overhead per resource is known.

Run: scripts/bench engine_steps [ROTATIONS]
"""

from __future__ import annotations

import datetime
import sys
import time
import tracemalloc

from common import record

from keyrotor import status as status_io
from keyrotor.engine.model import ConsumerResult, ProbeRound, RotationSpec, RotationState
from keyrotor.engine.rotation import probe_due, step

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def main() -> None:
    rotations = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    spec = RotationSpec(every=86400, min_overlap=600, max_overlap=86400, interval=15,
                        successes_required=3, consumer_names=("api", "worker"))
    results = tuple(ConsumerResult(n, True, "HTTP 200") for n in spec.consumer_names)
    state, now, steps = RotationState(), T0, 0
    started = time.perf_counter()
    while state.rotation_count < rotations:
        version = probe_due(spec, state, now)
        probe = ProbeRound(version=version, results=results) if version else None
        result = step(spec, state, now=now, probe=probe)
        # The operator persists through the status encoding on every step: include it.
        state = status_io.from_status(status_io.to_status(result.state))
        now += datetime.timedelta(seconds=max(result.requeue_after, 0.001))
        steps += 1
    elapsed = time.perf_counter() - started

    tracemalloc.start()
    states = [status_io.from_status(status_io.to_status(state)) for _ in range(1000)]
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del states
    record("Rotation engine", [
        f"- {rotations} full TwoKeys rotations (2 consumers, 3 rounds each), {steps} steps "
        f"including the status round trip: {elapsed:.2f} s",
        f"- {steps / elapsed:,.0f} steps/s, {elapsed / rotations * 1e3:.2f} ms of CPU per "
        "rotation",
        f"- one decoded state: {size / 1000 / 1024:.1f} KiB",
        f"- injected time covered: {(now - T0).days} days",
    ])


if __name__ == "__main__":
    main()
