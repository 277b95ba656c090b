"""Rotation throughput and event-loop lag while the operator generates key pairs: for each of
Ed25519, ECDSA-P256, RSA-2048, RSA-3072 and RSA-4096, K RotatingSecrets (keyPair generator, no
consumers, minOverlap 1s) are created at once (K first versions), then all K are asked to
rotate at once with the keyrotor.io/rotate annotation (K more keys, each rotation staged,
promoted and revoked).

Event-loop lag, two ways:

* inside the operator: ``keyrotor_event_loop_lag_seconds`` (keyrotor.looplag, started when
  $KEYROTOR_LOOP_LAG=1, which this benchmark sets, once the runner starts it; or by
  ``--wrap-lag-probe``, which runs it through bench/instrumented_operator.py) — p99
  from its buckets' increase over each phase, as PromQL's histogram_quantile would (so within
  its bucket: 25-50 ms reads as a value in between). Reported "not measured" while the
  operator does not run the probe.
* from outside: the latency of ``/healthz``, which the operator serves on its event loop,
  timed every 50 ms (an upper bound of the lag plus a local HTTP round trip).

Target (issue 10): p99 event-loop lag ≤ 50 ms during RSA-4096 generation.

Run: scripts/bench keygen_lag [K] [--algorithms Ed25519,RSA-4096] [--wrap-lag-probe]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from cluster import (
    SMALL_SCALE,
    Bench,
    HealthzProbe,
    Operator,
    Sampler,
    annotate_all,
    cluster,
    create_all,
    histogram_quantile,
    mb,
    percentile,
    rotating_secret,
)
from common import record

NS = "bench"
ALGORITHMS = ("Ed25519", "ECDSA-P256", "RSA-2048", "RSA-3072", "RSA-4096")
LAG = "keyrotor_event_loop_lag_seconds_bucket"


def lag_figures(operator: Operator, probe: HealthzProbe, before: dict[str, float],
                after: dict[str, float], start: float, end: float) -> str:
    inside = histogram_quantile(0.99, before, after)
    text = "loop lag p99 " + (f"**{inside[0] * 1e3:.0f} ms** ({inside[1]} samples)"
                              if inside else "not measured (the operator runs no lag probe)")
    outside = probe.between(start, end)
    if outside:
        text += (f"; /healthz latency p50 {percentile(outside, 50) * 1e3:.0f} ms, p99 "
                 f"{percentile(outside, 99) * 1e3:.0f} ms, max {max(outside) * 1e3:.0f} ms "
                 f"({len(outside)} probes)")
    return text


def phase(b: Bench, operator: Operator, selector: str, count: int, timeout: float, what: str,
          act: Callable[[], object], **status: int) -> tuple[float, float, dict[str, float]]:
    """Watch the RotatingSecrets labelled ``selector``, run ``act`` and wait until ``count`` of
    them are Idle with each ``status`` field at least as given. Returns the wall-clock time
    just before ``act``, the time the last of them got there, and the lag histogram then."""
    watcher = b.watch_rotating(NS, label_selector=selector, **status)
    start = time.time()
    act()
    end = watcher.reached_all(count, timeout, what, operator.log)
    lag = operator.series(LAG)
    watcher.stop()
    return start, end, lag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("objects", type=int, nargs="?", default=50,
                        help="RotatingSecrets per algorithm")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--wrap-lag-probe", action="store_true",
                        help="start the lag probe by wrapping the runner "
                        "(instrumented_operator.py) for an operator that does not start it yet")
    args = parser.parse_args()
    k, algorithms = args.objects, args.algorithms.split(",")
    lines = [*(SMALL_SCALE if k < 100 else []),
             f"- per algorithm: {k} RotatingSecrets (keyPair, formats pem+jwk, no consumers, "
             "minOverlap 1s) created at once, then all rotated at once; one operator "
             "(namespaced), algorithms one after another"
             + ("; lag probe started by bench/instrumented_operator.py (wrapping the "
                "runner)" if args.wrap_lag_probe else "")]
    with tempfile.TemporaryDirectory() as tmp, cluster(NS) as b:
        operator = Operator(b.plane, Path(tmp) / "operator.log", namespaces=(NS,),
                            env={"KEYROTOR_LOOP_LAG": "1"}, launcher=(
                                str(Path(__file__).with_name("instrumented_operator.py")),)
                            if args.wrap_lag_probe else ("-m", "keyrotor"))
        try:
            operator.start()
            sampler = Sampler(operator.pid, 0.5)
            probe = HealthzProbe(operator, 0.05)
            for algorithm in algorithms:
                slug = algorithm.lower()
                selector = f"bench/algorithm={slug}"
                names = [f"{slug}-{i:05d}" for i in range(k)]
                bodies = [rotating_secret(name, NS, every=None, labels={
                    "bench/algorithm": slug}, generator={"keyPair": {"algorithm": algorithm}})
                    for name in names]
                lag0 = operator.series(LAG)
                t0, t1, lag1 = phase(b, operator, selector, k, args.timeout,
                                     f"{algorithm} first versions",
                                     partial(create_all, b.rest, bodies), currentVersion=1)
                t2, t3, lag2 = phase(b, operator, selector, k, args.timeout,
                                     f"{algorithm} rotations",
                                     partial(annotate_all, b.rest, NS, names,
                                             "keyrotor.io/rotate", "bench"), rotationCount=1)
                cpu = sampler.cpu_between(t0, t3)
                lines += [
                    f"- **{algorithm}**: {k} first versions in {t1 - t0:.1f} s "
                    f"({k / (t1 - t0):.1f}/s), "
                    + lag_figures(operator, probe, lag0, lag1, t0, t1),
                    f"  - {k} rotations at once in {t3 - t2:.1f} s (**{k / (t3 - t2):.1f} "
                    "rotations/s**, each includes the 1 s minOverlap), "
                    + lag_figures(operator, probe, lag1, lag2, t2, t3),
                    f"  - operator CPU {cpu:.1f} s over both ({cpu / (t3 - t0):.2f} cores)",
                ]
            probe.stop()
            sampler.stop()
        finally:
            operator.stop()
    lines.append(f"- operator peak RSS {mb(sampler.peak_rss())}")
    record("Key generation: rotation throughput and event-loop lag", lines)


if __name__ == "__main__":
    main()
