"""The consumer library on the request path: how fast an acceptor checks a credential, how
much a presenter's fallback costs, and how quickly a kubelet swap is picked up.

An acceptor calls ``verify`` once per request, so its cost is per-request latency. Target:
well under 20 µs per check with all three slots filled (a fraction of any HTTP handler).

Run: scripts/bench client_verify [CALLS]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from common import record
from prometheus_client import CollectorRegistry

from keyrotor.client import Rejected, RotatingSecret
from keyrotor.testing.secretmount import KubeletMount


def per_call(fn: object, calls: int) -> float:
    assert callable(fn)
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    with tempfile.TemporaryDirectory() as tmp:
        mount = KubeletMount(Path(tmp) / "api-key")
        mount.write({"current": b"c" * 43, "next": b"n" * 43, "previous": b"p" * 43,
                     "versions.json": b'{"current": 8, "next": 9, "previous": 7}'})
        # refresh=1.0 as in production: at most one readlink per second.
        secret = RotatingSecret(mount.root, registry=CollectorRegistry())
        verify_hit = per_call(lambda: secret.verify(b"p" * 43), calls)
        verify_miss = per_call(lambda: secret.verify(b"x" * 43), calls)
        accepts = {b"p" * 43}

        def send(key: bytes) -> bool:
            if key not in accepts:
                raise Rejected("401")
            return True

        fallback = per_call(lambda: secret.call_with_fallback(send), calls // 4)
        sign = per_call(lambda: secret.sign(b"payload"), calls // 4)

        # Reload: swap, then time until the next refresh window picks it up and reads it.
        fresh = RotatingSecret(mount.root, refresh=0.0, registry=CollectorRegistry())
        reloads = []
        for i in range(200):
            mount.write({"current": f"v{i}".encode() * 10,
                         "versions.json": f'{{"current": {i}}}'.encode()})
            started = time.perf_counter()
            assert fresh.version() == i
            reloads.append((time.perf_counter() - started) * 1e6)
        reloads.sort()
    record("Consumer library: checks per request, fallback, reload", [
        f"- `verify` with three slots filled, match in the last slot: "
        f"**{verify_hit:.1f} µs** per call (target < 20 µs); no match: {verify_miss:.1f} µs",
        f"- `call_with_fallback`, current rejected then previous accepted: "
        f"{fallback:.1f} µs per call (library overhead around two calls of the target)",
        f"- `sign` (HMAC-SHA256 with current): {sign:.1f} µs",
        f"- reload after a kubelet swap (readlink, read 2 files, parse versions.json): "
        f"median {reloads[len(reloads) // 2]:.0f} µs, "
        f"p99 {reloads[int(len(reloads) * .99)]:.0f} µs",
        f"- calls: {calls} per measurement (fallback and sign: {calls // 4})",
    ])


if __name__ == "__main__":
    main()
