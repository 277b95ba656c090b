"""Steady state: N RotatingSecrets reconciled (Idle, version 1, every 720h), then left alone
for MINUTES while the operator's RSS and CPU are sampled every 30 s (``--interval``). Nothing
should grow, and an idle operator should use next to no CPU and make next to no requests.

Reports RSS first/last/max and growth, CPU per interval (cores) first/last/max and the total,
and the operator's requests during the idle period by verb and resource (its audit log).

Run: scripts/bench steady N MINUTES [--interval SECONDS]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

from cluster import (
    SMALL_SCALE,
    Operator,
    Sampler,
    by_key,
    cluster,
    mb,
    reconcile_all,
    request_table,
    writes,
)
from common import record

NS = "bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("objects", type=int, nargs="?", default=1000)
    parser.add_argument("minutes", type=float, nargs="?", default=30)
    parser.add_argument("--interval", type=float, default=30)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    n = args.objects
    with tempfile.TemporaryDirectory() as tmp, cluster(NS) as b:
        operator = Operator(b.plane, Path(tmp) / "operator.log", namespaces=(NS,))
        try:
            operator.start()
            setup_s = reconcile_all(b, NS, "steady", n, timeout=args.timeout, quiet=5,
                                    quiet_timeout=args.timeout)
            mark = b.audit.mark()
            started = time.time()
            sampler = Sampler(operator.pid, args.interval)
            time.sleep(args.minutes * 60)
            samples = sampler.stop()
            ended = time.time()
            requests = b.audit.since(mark)
        finally:
            operator.stop()

    rss = [s.rss for s in samples]
    cores = [(b2.cpu - a.cpu) / (b2.at - a.at) for a, b2 in itertools.pairwise(samples)
             if b2.at > a.at]
    ops = by_key(requests)
    w, events = writes(ops)
    minutes = (ended - started) / 60
    series = ", ".join(f"{r / 1e6:.0f}" for r in rss)
    record(f"Steady state: {n} idle RotatingSecrets for {args.minutes:g} minutes", [
        *(SMALL_SCALE if n < 1000 else []),
        f"- objects: {n} RotatingSecrets Idle at version 1 (random, every 720h), reconciled in "
        f"{setup_s:.1f} s; then {minutes:.1f} minutes idle, sampled every "
        f"{args.interval:g} s ({len(samples)} samples)",
        f"- operator RSS: first **{mb(rss[0])}**, last **{mb(rss[-1])}**, max {mb(max(rss))}; "
        f"growth {(rss[-1] - rss[0]) / 1e6:+.1f} MB ({(rss[-1] - rss[0]) / rss[0] * 100:+.1f} %)",
        f"- RSS over time (MB): {series}",
        f"- operator CPU per interval (cores): first {cores[0]:.3f}, last {cores[-1]:.3f}, max "
        f"{max(cores):.3f}; total {samples[-1].cpu - samples[0].cpu:.1f} s of CPU in "
        f"{minutes:.1f} min" if cores else "- CPU: fewer than two samples",
        f"- operator requests while idle: {len(requests)} ({len(requests) / minutes:.1f}/min), "
        f"writes {w} besides {events} events",
        "",
        *(request_table(ops) if ops else []),
    ])


if __name__ == "__main__":
    main()
