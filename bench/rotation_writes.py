"""API writes of one full TwoKeys rotation with one HTTP consumer, by verb and resource (events
apart), from the operator's own user's audit log. Target: at most 6 writes besides events.

The consumer is a tiny aiohttp server in this process answering 200 to every probe; the spec
probes every 1 s and needs 2 passing rounds in a row, minOverlap 2s. Also reports the writes
of the first version (target: at most 3) and how many probes the consumer answered.

Run: scripts/bench rotation_writes [ROTATIONS]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from aiohttp import web
from cluster import (
    CROSS_NOTE,
    Key,
    MetricsWindow,
    Operator,
    annotate_all,
    audit_head_writes,
    by_key,
    cluster,
    create_all,
    request_table,
    rotating_secret,
    wait_quiet,
    writes,
)
from common import record

from keyrotor.testing.controlplane import free_port

NS, NAME = "bench", "rotation-writes"


class Consumer:
    """An HTTP endpoint answering 200 to anything, on its own thread and loop."""

    def __init__(self) -> None:
        self.port, self.hits = free_port(), 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._run, daemon=True, name="consumer").start()
        self._ready.wait(10)

    def _run(self) -> None:
        async def ok(_: web.Request) -> web.Response:
            self.hits += 1
            return web.Response(text="ok")

        async def serve() -> None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", ok)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._ready.set()

        self._loop.run_until_complete(serve())
        self._loop.run_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rotations", type=int, nargs="?", default=1)
    args = parser.parse_args()
    consumer = Consumer()
    body = rotating_secret(
        NAME, NS, every=None, min_overlap="2s", strategy="TwoKeys",
        consumers=[{"name": "api", "http": {
            "url": f"http://127.0.0.1:{consumer.port}/auth/check",
            "headers": {"Authorization": "Bearer {{ candidate }}"}}}],
        verification={"interval": "1s", "successesRequired": 2})
    per_rotation: list[Counter[Key]] = []
    durations, probes = [], []
    with tempfile.TemporaryDirectory() as tmp, cluster(NS) as b:
        operator = Operator(b.plane, Path(tmp) / "operator.log", namespaces=(NS,))
        try:
            operator.start()
            mark = b.audit.mark()
            ready = b.watch_rotating(NS, currentVersion=1)
            create_all(b.rest, [body])
            ready.reached_all(1, 120, "at version 1", operator.log)
            wait_quiet(b.audit, quiet=3)
            first = by_key(b.audit.since(mark))
            ready.stop()
            for n in range(1, args.rotations + 1):
                done = b.watch_rotating(NS, rotationCount=n)
                window, mark, hits = MetricsWindow(b.rest), b.audit.mark(), consumer.hits
                started = time.time()
                annotate_all(b.rest, NS, [NAME], "keyrotor.io/rotate", f"bench-{n}")
                durations.append(done.reached_all(1, 300, f"finished rotation {n}",
                                                  operator.log) - started)
                wait_quiet(b.audit, quiet=3)
                done.stop()
                per_rotation.append(by_key(b.audit.since(mark)))
                probes.append(consumer.hits - hits)
                _, cross, _ = window.diff()
        finally:
            operator.stop()

    last = per_rotation[-1]
    w_first, e_first = writes(first)
    lines = [
        "- one RotatingSecret, TwoKeys, random 32 bytes, one HTTP consumer answering 200 "
        "(verification every 1s, successesRequired 2), minOverlap 2s; rotation requested "
        "with the keyrotor.io/rotate annotation (the benchmark's own patch, not counted)",
        f"- first version: **{w_first} writes** besides events and the audit head (target "
        f"≤ 3), {e_first} events, {audit_head_writes(first)} audit head writes",
    ]
    for n, counts in enumerate(per_rotation, 1):
        w, e = writes(counts)
        lines.append(f"- rotation {n}: **{w} writes** besides events and the audit head "
                     f"(target ≤ 6), {e} events, {audit_head_writes(counts)} audit head "
                     "writes (at most one a second, whatever the number of objects); "
                     f"request to Idle at the next version {durations[n - 1]:.1f} s; the "
                     f"consumer answered {probes[n - 1]} probes")
    lines += [f"- requests of rotation {len(per_rotation)} by verb and resource:", "",
              *request_table(last, cross=cross), "", CROSS_NOTE, "",
              "- requests of the first version:", "", *request_table(first)]
    record("Writes of one TwoKeys rotation with an HTTP consumer", lines)


if __name__ == "__main__":
    main()
