"""Restart: N RotatingSecrets already reconciled (Idle, version 1, every 720h), the operator
stopped (SIGTERM) and a new one started. A restart with nothing to do should write nothing.

Measures, for the new process: the time from its start until every object has been seen and
its next wake-up scheduled (its metrics: the number of ``keyrotor_next_rotation_timestamp_seconds``
series reaching N, and of ``keyrotor_phase{phase="Idle"} 1`` series, scraped every second
or ``--scrape-interval``),
the time until it stops making requests (audit log quiet for 5 s), its requests and writes by
verb and resource (its own user's audit log; target 0 writes), its peak request rate (audit
timestamps, per second), answers with 429 (apiserver_request_total, all clients, and its
audit log), its RSS and CPU.

Options for finding where the memory goes (they run the new operator through
bench/instrumented_operator.py): ``--settings JSON`` overrides kopf settings after keyrotor's
(e.g. ``'{"watching.chunk_size": 500}'``); ``--trim`` asks the quiet operator to
``malloc_trim(0)`` and records its RSS before and after (freed memory glibc kept);
``--tracemalloc FRAMES`` records its top allocation sites once quiet (tracing inflates RSS).

Run: scripts/bench restart N [--settings JSON] [--trim] [--tracemalloc FRAMES]
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from burst import top_allocations, tracing
from cluster import (
    CROSS_NOTE,
    SMALL_SCALE,
    MetricsWindow,
    Operator,
    Sampler,
    by_key,
    cluster,
    mb,
    peak_rate,
    read_proc,
    reconcile_all,
    request_table,
    wait_quiet,
    writes,
)
from common import record

NS = "bench"
SCHEDULED = "keyrotor_next_rotation_timestamp_seconds"


def idle_series(operator: Operator, text: str) -> int:
    return sum(1 for key, value in operator.series("keyrotor_phase", text).items()
               if 'phase="Idle"' in key and value == 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("objects", type=int, nargs="?", default=1000)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--scrape-interval", type=float, default=1.0, metavar="SECONDS",
                        help="how often to read the operator's metrics (each read costs it "
                        "CPU: about 12 series per object)")
    parser.add_argument("--settings", metavar="JSON",
                        help="kopf settings for the new operator, after keyrotor's own")
    parser.add_argument("--trim", action="store_true",
                        help="once quiet, malloc_trim(0) in the new operator; RSS before/after")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES")
    args = parser.parse_args()
    n = args.objects
    with tempfile.TemporaryDirectory() as tmp, cluster(NS) as b:
        first = Operator(b.plane, Path(tmp) / "first.log", namespaces=(NS,))
        dump = Path(tmp) / "tracemalloc.txt"
        instruments: dict[str, Any] = tracing(args.tracemalloc, dump)
        if args.settings or args.trim:
            instruments["launcher"] = (str(Path(__file__).with_name(
                "instrumented_operator.py")),)
            instruments["env"] = {**instruments.get("env", {}),
                                  **({"KEYROTOR_BENCH_SETTINGS": args.settings}
                                     if args.settings else {})}
        second = Operator(b.plane, Path(tmp) / "second.log", namespaces=(NS,), **instruments)
        trimmed: tuple[int, int] | None = None
        allocations = ""
        try:
            first.start()
            setup_s = reconcile_all(b, NS, "restart", n, timeout=args.timeout, quiet=3)
            first_sample = read_proc(first.pid)
            first_rss = first_sample.rss if first_sample else 0
            first.stop()

            window, mark = MetricsWindow(b.rest), b.audit.mark()
            started = time.time()
            second.start(watching=None)
            sampler = Sampler(second.pid, 0.5)
            scheduled_at = idle_at = None
            scheduled = idle = 0
            deadline = time.monotonic() + args.timeout
            while (scheduled_at is None or idle_at is None) and time.monotonic() < deadline:
                text = second.metrics()
                scheduled, idle = len(second.series(SCHEDULED, text)), idle_series(second, text)
                now = time.time()
                if scheduled_at is None and scheduled >= n:
                    scheduled_at = now
                if idle_at is None and idle >= n:
                    idle_at = now
                time.sleep(args.scrape_interval)
            last_request = wait_quiet(b.audit, quiet=5, timeout=args.timeout)
            if args.tracemalloc:
                allocations = top_allocations(second, dump)
            if args.trim:
                before = read_proc(second.pid)
                os.kill(second.pid, signal.SIGUSR2)
                time.sleep(2)
                after = read_proc(second.pid)
                trimmed = (before.rss if before else 0, after.rss if after else 0)
            samples = sampler.stop()
            requests = b.audit.since(mark)
            _, cross, too_many = window.diff()
        finally:
            first.stop()
            second.stop()

    ops = by_key(requests)
    w, events = writes(ops)
    denied = sum(1 for r in requests if r.code == 429)
    cpu = sampler.cpu_between(started, last_request)

    def since(at: float | None, count: int) -> str:
        return f"**{at - started:.1f} s**" if at is not None else \
            f"not reached ({count} of {n} after {args.timeout:.0f} s)"

    record(f"Restart over {n} reconciled RotatingSecrets", [
        *(SMALL_SCALE if n < 1000 else []),
        f"- objects: {n} RotatingSecrets Idle at version 1 (random, every 720h), reconciled "
        f"by a first operator in {setup_s:.1f} s (its RSS then {mb(first_rss)}), which "
        "was then stopped with SIGTERM",
        f"- new operator, from its start: every object scheduled ({SCHEDULED} series = N) "
        f"{since(scheduled_at, scheduled)}; every object's phase Idle in its metrics "
        f"{since(idle_at, idle)}; its last request {last_request - started:.1f} s (metrics "
        f"scraped every {args.scrape_interval:g} s)",
        f"- its writes, events and access reviews apart: **{w}** (target 0); events: "
        f"{events}; all its requests: "
        f"{sum(ops.values())} ({sum(ops.values()) / n:.2f} per object)",
        f"- its peak request rate: {peak_rate(requests):.0f}/s (busiest second), mean "
        f"{len(requests) / max(last_request - started, 1e-9):.0f}/s until its last request",
        f"- 429 answers: {too_many} (apiserver_request_total, all clients), {denied} to the "
        "operator (audit)",
        f"- its RSS: peak {mb(sampler.peak_rss())}, at the end {mb(samples[-1].rss)}; CPU "
        f"{cpu:.1f} s until its last request",
        "- its requests by verb and resource:",
        "",
        *request_table(ops, per=n, cross=cross),
        "",
        CROSS_NOTE,
        *([f"- new operator run with kopf settings `{args.settings}` on top of keyrotor's "
           "(bench/instrumented_operator.py)"] if args.settings else []),
        *([f"- malloc_trim(0) once quiet: RSS {mb(trimmed[0])} → **{mb(trimmed[1])}**"]
          if trimmed else []),
        *(["", f"New operator run under tracemalloc ({args.tracemalloc} frames; its RSS and "
           "CPU above include tracing), allocations when quiet:", "", "```",
           *allocations.rstrip().splitlines(), "```"] if args.tracemalloc else []),
    ])


if __name__ == "__main__":
    main()
