"""Burst: N RotatingSecrets created at once (random generator, no consumers) against the real
local control plane and a real operator process (namespaced to ``bench``).

Measures: the creation itself (N POSTs from a thread pool); the time until every Secret exists
(a watch on Secrets labelled app.kubernetes.io/managed-by=keyrotor, opened before the burst,
records when each is first seen; no polling); create → Secret p50/p99 (from each POST's
answer); the time until every RotatingSecret is Idle at version 1; the operator's API requests
by verb and resource (its own user's audit log, cross-checked against apiserver_request_total,
see cluster.py); the operator's RSS (VmRSS/VmHWM every 0.5 s) and CPU.

``--unrelated M`` first creates M unrelated 512 KiB Secrets in namespace ``unrelated``, before
the operator starts, and runs the operator cluster-wide (no ``-n``), so it could see them:
keyrotor must not cache what it does not own. (At M = 10,000 that is 5 GiB in etcd, whose
quota cluster.py raises to 8 GiB, and in kube-apiserver's watch cache: mind the memory.)

``--tracemalloc FRAMES`` runs the operator under tracemalloc (bench/instrumented_operator.py)
and records its top 20 allocation sites once it is quiet: where the memory goes.

Run: scripts/bench burst N [--unrelated M [--unrelated-kib K]] [--threads T]
[--tracemalloc FRAMES]
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cluster import (
    CROSS_NOTE,
    SMALL_SCALE,
    MetricsWindow,
    Operator,
    Rest,
    Sampler,
    by_key,
    cluster,
    create_all,
    mb,
    percentile,
    request_table,
    rotating_secret,
    wait_quiet,
    writes,
)
from common import record

from keyrotor.testing.waiting import wait_for

NS, UNRELATED = "bench", "unrelated"


def create_unrelated(rest: Rest, count: int, threads: int, kib: int = 512) -> float:
    """M Secrets of ``kib`` KiB of random bytes each, in namespace ``unrelated``; seconds
    taken."""
    blob = base64.b64encode(os.urandom(kib * 1024)).decode()
    bodies = [{"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": f"unrelated-{i:05d}", "namespace": UNRELATED,
                            "labels": {"app": "unrelated"}},
               "data": {"blob": blob}} for i in range(count)]
    started = time.monotonic()
    create_all(rest, bodies, threads=threads)
    return time.monotonic() - started


def tracing(frames: int, dump: Path) -> dict[str, Any]:
    """Operator() arguments that run it under tracemalloc (nothing when ``frames`` is 0)."""
    if not frames:
        return {}
    return {"launcher": (str(Path(__file__).with_name("instrumented_operator.py")),),
            "env": {"PYTHONTRACEMALLOC": str(frames), "KEYROTOR_TRACEMALLOC_OUT": str(dump)}}


def top_allocations(operator: Operator, dump: Path) -> str:
    """Ask the instrumented operator (SIGUSR1) for its top allocation sites."""
    os.kill(operator.pid, signal.SIGUSR1)
    wait_for(dump.exists, timeout=120, interval=0.2, what="tracemalloc dump")
    return dump.read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("objects", type=int, nargs="?", default=1000)
    parser.add_argument("--unrelated", type=int, default=0, metavar="M")
    parser.add_argument("--unrelated-kib", type=int, default=512, metavar="K",
                        help="size of each unrelated Secret's data (default 512 KiB)")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--no-secret-watch-cache", action="store_true",
                        help="run kube-apiserver with --watch-cache-sizes=secrets#0: with its "
                        "watch cache, 10,000 Secrets of 512 KiB took it to 17.6 GB RSS, more "
                        "than this machine can spare; keyrotor's requests are the same either "
                        "way (a label-selected list and watch)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                        help="run the operator with PYTHONTRACEMALLOC=FRAMES through "
                        "instrumented_operator.py and record its top 20 allocation sites at "
                        "the end (tracing inflates RSS and CPU: compare only across such runs)")
    args = parser.parse_args()
    n = args.objects
    namespaces = (NS, UNRELATED) if args.unrelated else (NS,)
    with tempfile.TemporaryDirectory() as tmp, cluster(
            *namespaces, apiserver_flags=["--watch-cache-sizes=secrets#0"]
            if args.no_secret_watch_cache else []) as b:
        unrelated_s = create_unrelated(b.rest, args.unrelated, args.threads,
                                       args.unrelated_kib) if args.unrelated else 0.0
        dump = Path(tmp) / "tracemalloc.txt"
        operator = Operator(b.plane, Path(tmp) / "operator.log",
                            namespaces=() if args.unrelated else (NS,),
                            **tracing(args.tracemalloc, dump))
        try:
            operator.start()
            sampler = Sampler(operator.pid, 0.5)
            time.sleep(2)  # the operator's idle footprint before the burst
            idle = sampler.samples[-1]
            secrets = b.watch_secrets(NS)
            ready = b.watch_rotating(NS, currentVersion=1)
            window, mark = MetricsWindow(b.rest), b.audit.mark()
            bodies = [rotating_secret(f"burst-{i:05d}", NS) for i in range(n)]
            started = time.time()
            created = create_all(b.rest, bodies, threads=args.threads)
            creation = time.time() - started
            all_secrets = secrets.reached_all(n, args.timeout, "Secrets", operator.log)
            all_ready = ready.reached_all(n, args.timeout, "RotatingSecrets Idle at 1")
            last_request = wait_quiet(b.audit, quiet=5)
            tail_start = time.time()
            time.sleep(5)  # CPU once it has nothing left to do
            tail = sampler.cpu_between(tail_start, time.time()) / (time.time() - tail_start)
            allocations = top_allocations(operator, dump) if args.tracemalloc else ""
            samples = sampler.stop()
            end = samples[-1]
            secrets.stop()
            ready.stop()
            ops = by_key(b.audit.since(mark))
            _, cross, too_many = window.diff()
        finally:
            operator.stop()
        # The Secret watch's troubles, if any (it logs each failed list or watch).
        watch_failures = [line for line in Path(operator.log).read_text(errors="replace")
                          .splitlines() if "watching Secrets" in line]

    last_answer = max(answered for _, answered in created.values())
    lags = [secrets.reached[name] - answered for name, (_, answered) in created.items()]
    w, events = writes(ops)
    cpu = sampler.cpu_between(started, last_request)
    lines = [
        *(SMALL_SCALE if n < 1000 else []),
        f"- objects: {n} RotatingSecrets (random 32 bytes, every 720h, no consumers) in one "
        f"namespace; operator {'cluster-wide' if args.unrelated else f'namespaced (-n {NS})'}",
    ]
    if args.unrelated:
        lines.append(f"- unrelated: {args.unrelated} Secrets of {args.unrelated_kib} KiB "
                     f"({args.unrelated * args.unrelated_kib / 2**20:.2f} GiB) in namespace "
                     f"`{UNRELATED}`, created before the operator started ({unrelated_s:.1f} s)")
        if args.no_secret_watch_cache:
            lines.append("- kube-apiserver ran with `--watch-cache-sizes=secrets#0` (Secrets "
                         "served from etcd, not its watch cache), to fit in this machine's "
                         "memory")
    lines += [
        f"- the operator's Secret watch failed {len(watch_failures)} times"
        + (f"; the first: `{watch_failures[0][-200:]}`" if watch_failures else ""),
        f"- creation: {n} POSTs from {args.threads} threads in {creation:.2f} s "
        f"({n / creation:.0f}/s)",
        f"- until every Secret exists (from the first POST): **{all_secrets - started:.1f} s**"
        f" ({all_secrets - last_answer:.1f} s after the last POST was answered); every "
        f"RotatingSecret Idle at version 1: {all_ready - started:.1f} s; operator's last "
        f"request: {last_request - started:.1f} s",
        f"- create (POST answered) → Secret seen: p50 **{percentile(lags, 50):.2f} s**, p99 "
        f"**{percentile(lags, 99):.2f} s**, max {max(lags):.2f} s, mean "
        f"{statistics.fmean(lags):.2f} s",
        f"- operator API writes per object, events and access reviews apart: **{w / n:.2f}**; "
        "events per object: "
        f"{events / n:.2f}; all operator requests per object: {sum(ops.values()) / n:.2f}",
        f"- 429 answers (apiserver_request_total, all clients): {too_many}",
        f"- operator RSS: idle before the burst {mb(idle.rss)}, **peak {mb(sampler.peak_rss())}"
        f"**, at the end {mb(end.rss)}",
        f"- operator CPU: {cpu:.1f} s from the first POST to its last request "
        f"({cpu / max(last_request - started, 1e-9):.2f} cores on average); "
        f"{tail:.2f} cores in the 5 s after it went quiet",
        "- operator requests by verb and resource:",
        "",
        *request_table(ops, per=n, cross=cross),
        "",
        CROSS_NOTE,
    ]
    if args.tracemalloc:
        lines += ["", f"Operator run under tracemalloc ({args.tracemalloc} frames; its RSS "
                  "and CPU above include tracing), allocations when quiet:", "", "```",
                  *allocations.rstrip().splitlines(), "```"]
    title = f"Burst of {n} RotatingSecrets" + (
        f" with {args.unrelated} unrelated {args.unrelated_kib} KiB Secrets"
        if args.unrelated else "")
    record(title, lines)


if __name__ == "__main__":
    main()
