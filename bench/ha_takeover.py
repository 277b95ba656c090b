"""Leader takeover with the Helm chart's Lease timings (15 s duration, 10 s renew deadline, 2 s
retry): two operator processes on the local control plane; the leader is SIGKILLed while a
rotation is under way (the new version staged or presented), KILLS times. Measures SIGKILL to
the standby leading (its ``keyrotor_leader`` gauge, scraped every 50 ms) and checks each
rotation finishes with the next version.

Run: scripts/bench ha_takeover [KILLS]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from cluster import Operator, cluster
from common import record

from keyrotor.kube import KubeApi, load_client
from keyrotor.testing.waiting import wait_for

NS, NAME = "default", "bench-ha"
LEADER = "keyrotor_leader"


def replica(operator: Operator) -> None:
    """(Re)start one replica and wait until it serves its ``keyrotor_leader`` gauge."""
    operator.start(watching=None, timeout=30)
    wait_for(lambda: operator.gauge(LEADER) is not None, timeout=30, what="metrics")


def main() -> None:
    kills = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    takeovers, finished = [], []
    with tempfile.TemporaryDirectory() as tmp, cluster() as b:
        replicas = {i: Operator(b.plane, Path(tmp) / f"{i}.log", namespaces=(NS,), extra=(
            "--phase-pause", "1", "--leader-elect", "--leader-election-namespace", NS,
            "--leader-election-identity", i)) for i in ("a", "b")}
        api = KubeApi(load_client(str(b.plane.kubeconfig)))
        try:
            replica(replicas["a"])
            wait_for(lambda: replicas["a"].gauge(LEADER) == 1, timeout=30, what="a to lead")
            replica(replicas["b"])
            b.plane.kubectl("apply", "-f", "-", input=yaml.safe_dump({
                "apiVersion": "keyrotor.io/v1alpha1", "kind": "RotatingSecret",
                "metadata": {"name": NAME, "namespace": NS},
                "spec": {"secretName": NAME, "rotation": {"minOverlap": "1s"},
                         "verification": {"interval": "500ms", "successesRequired": 1},
                         "generator": {"random": {"length": 32}}}}))

            def status() -> dict[str, object]:
                return dict((api.get_rotating_secret(NS, NAME) or {}).get("status") or {})

            wait_for(lambda: status().get("currentVersion") == 1, timeout=60)
            for n in range(1, kills + 1):
                leader = next(r for r in replicas.values() if r.gauge(LEADER) == 1)
                standby = next(r for r in replicas.values() if r is not leader)
                api.annotate_rotating_secret(NS, NAME, "keyrotor.io/rotate", f"ha-{n}")
                wait_for(lambda n=n: status().get("latestVersion") == n + 1 and status().get(
                    "phase") not in ("Idle", "Generating"), timeout=60, interval=0.05)
                leader.kill()
                killed = time.monotonic()
                wait_for(lambda s=standby: s.gauge(LEADER) == 1, timeout=60, interval=0.05)
                takeovers.append(time.monotonic() - killed)
                final = wait_for(lambda n=n: (s := status()).get("rotationCount") == n and s,
                                 timeout=120, interval=0.1)
                assert final["currentVersion"] == n + 1, final
                finished.append(time.monotonic() - killed)
                replica(leader)
        finally:
            for r in replicas.values():
                r.stop()
    record("Leader takeover after SIGKILL (chart timings)", [
        f"- kills: {kills}, each while a rotation was under way; Lease 15 s, renew deadline "
        "10 s, retry 2 s (the chart's defaults); phase pause 1 s",
        f"- SIGKILL to the standby leading: median {statistics.median(takeovers):.1f} s, "
        f"min {min(takeovers):.1f}, max {max(takeovers):.1f} s "
        f"(all: {', '.join(f'{t:.1f}' for t in takeovers)})",
        f"- SIGKILL to the interrupted rotation finished: median "
        f"{statistics.median(finished):.1f} s, max {max(finished):.1f} s",
        f"- every rotation ended on the next version (1 → {kills + 1}, none skipped)",
    ])


if __name__ == "__main__":
    main()
