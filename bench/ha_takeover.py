"""Leader takeover with the Helm chart's Lease timings (15 s duration, 10 s renew deadline, 2 s
retry): two operator processes on the local control plane; the leader is SIGKILLed while a
rotation is under way (the new version staged or presented), KILLS times. Measures SIGKILL to
the standby leading (its ``keyrotor_leader`` gauge, scraped every 50 ms) and checks each
rotation finishes with the next version.

Run: scripts/bench ha_takeover [KILLS]
"""

from __future__ import annotations

import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml
from common import record

from keyrotor.kube import KubeApi, load_client
from keyrotor.testing.controlplane import ControlPlane, free_port
from keyrotor.testing.toolchain import repo_root
from keyrotor.testing.waiting import wait_for

NS, NAME = "default", "bench-ha"


class Replica:
    def __init__(self, plane: ControlPlane, identity: str, log: Path) -> None:
        self.identity, self.port, self.log = identity, free_port(), log
        self.args = [sys.executable, "-m", "keyrotor", "run", "-n", NS, "--kubeconfig",
                     str(plane.kubeconfig), "--metrics-port", str(self.port),
                     "--liveness-port", str(free_port()), "--phase-pause", "1",
                     "--leader-elect", "--leader-election-namespace", NS,
                     "--leader-election-identity", identity]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: self.leader() is not None, timeout=30, what="metrics")

    def leader(self) -> float | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",
                                        timeout=1) as r:
                text = r.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("keyrotor_leader "):
                return float(line.split()[1])
        return None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


def main() -> None:
    kills = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    takeovers, finished = [], []
    with tempfile.TemporaryDirectory() as tmp, ControlPlane() as plane:
        plane.kubectl("apply", "--server-side", "-f", str(repo_root() / "crds"))
        plane.kubectl("wait", "--for=condition=Established", "crd/rotatingsecrets.keyrotor.io")
        replicas = {i: Replica(plane, i, Path(tmp) / f"{i}.log") for i in ("a", "b")}
        replicas["a"].start()
        wait_for(lambda: replicas["a"].leader() == 1, timeout=30, what="a to lead")
        replicas["b"].start()
        api = KubeApi(load_client(str(plane.kubeconfig)))
        try:
            plane.kubectl("apply", "-f", "-", input=yaml.safe_dump({
                "apiVersion": "keyrotor.io/v1alpha1", "kind": "RotatingSecret",
                "metadata": {"name": NAME, "namespace": NS},
                "spec": {"secretName": NAME, "rotation": {"minOverlap": "1s"},
                         "verification": {"interval": "500ms", "successesRequired": 1},
                         "generator": {"random": {"length": 32}}}}))

            def status() -> dict[str, object]:
                return dict((api.get_rotating_secret(NS, NAME) or {}).get("status") or {})

            wait_for(lambda: status().get("currentVersion") == 1, timeout=60)
            for n in range(1, kills + 1):
                leader = next(r for r in replicas.values() if r.leader() == 1)
                standby = next(r for r in replicas.values() if r is not leader)
                api.annotate_rotating_secret(NS, NAME, "keyrotor.io/rotate", f"ha-{n}")
                wait_for(lambda n=n: status().get("latestVersion") == n + 1 and status().get(
                    "phase") not in ("Idle", "Generating"), timeout=60, interval=0.05)
                leader.kill()
                killed = time.monotonic()
                wait_for(lambda s=standby: s.leader() == 1, timeout=60, interval=0.05)
                takeovers.append(time.monotonic() - killed)
                final = wait_for(lambda n=n: (s := status()).get("rotationCount") == n and s,
                                 timeout=120, interval=0.1)
                assert final["currentVersion"] == n + 1, final
                finished.append(time.monotonic() - killed)
                leader.start()
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
