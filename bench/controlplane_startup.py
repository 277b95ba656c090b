"""How long the local control plane takes from start to /readyz, warm (binaries built).

Target (issue 2): under 10 s warm. Run: scripts/bench controlplane_startup [N]
"""

from __future__ import annotations

import statistics
import sys
import time

from common import record

from keyrotor.testing.controlplane import ControlPlane
from keyrotor.testing.toolchain import ensure_binaries


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    binaries = ensure_binaries()
    ready, stop = [], []
    for _ in range(runs):
        plane = ControlPlane(binaries=binaries).start()
        ready.append(plane.ready_seconds)
        started = time.monotonic()
        plane.stop()
        stop.append(time.monotonic() - started)
    record("Control plane start to ready", [
        f"- runs: {runs}",
        f"- start to /readyz: median {statistics.median(ready):.2f} s, "
        f"min {min(ready):.2f} s, max {max(ready):.2f} s (target < 10 s)",
        f"- stop (both processes gone, directory removed): median "
        f"{statistics.median(stop):.2f} s",
    ])


if __name__ == "__main__":
    main()
