"""End-to-end time of rotations whose keys live in a backend (SoftHSM2 over PKCS#11), through
the real operator on the local control plane: from the rotation request to the old key's
destruction on the token, with minOverlap 1s and no consumers to wait for.

Run: scripts/bench backend_rotation [ROTATIONS]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import record

from keyrotor.kube import KubeApi, load_client
from keyrotor.status import parse_ts
from keyrotor.testing.controlplane import ControlPlane, free_port
from keyrotor.testing.softhsm import init_token
from keyrotor.testing.toolchain import repo_root
from keyrotor.testing.waiting import wait_for

NS, NAME = "default", "bench-hsm"


def main() -> None:
    rotations = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with tempfile.TemporaryDirectory() as tmp, ControlPlane() as plane:
        token = init_token(Path(tmp))
        plane.kubectl("apply", "--server-side", "-f", str(repo_root() / "crds"))
        plane.kubectl("wait", "--for=condition=Established", "crd/rotatingsecrets.keyrotor.io")
        plane.kubectl("create", "secret", "generic", "hsm-pin", "-n", NS,
                      f"--from-literal=pin={token.pin}")
        env = {**os.environ, **token.env()}
        operator = subprocess.Popen(
            [sys.executable, "-m", "keyrotor", "run", "-n", NS, "--kubeconfig",
             str(plane.kubeconfig), "--metrics-port", str(free_port()), "--liveness-port",
             str(free_port())], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            api = KubeApi(load_client(str(plane.kubeconfig)))
            body = {"apiVersion": "keyrotor.io/v1alpha1", "kind": "RotatingSecret",
                    "metadata": {"name": NAME, "namespace": NS},
                    "spec": {"secretName": NAME, "rotation": {"minOverlap": "1s"},
                             "generator": {"hsm": {"module": token.module,
                                                   "tokenLabel": token.label,
                                                   "pinSecretRef": {"name": "hsm-pin"},
                                                   "key": "EC-P256"}}}}
            plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(body))

            def status() -> dict[str, object]:
                return dict((api.get_rotating_secret(NS, NAME) or {}).get("status") or {})

            wait_for(lambda: status().get("currentVersion") == 1, timeout=60)
            wall, inside = [], []
            for n in range(1, rotations + 1):
                started = time.monotonic()
                api.annotate_rotating_secret(NS, NAME, "keyrotor.io/rotate", f"bench-{n}")
                final = wait_for(lambda n=n: (s := status()).get("rotationCount") == n and s,
                                 timeout=60, interval=0.05)
                wall.append(time.monotonic() - started)
                begun = parse_ts(str(final.get("currentVersionTime")))
                ended = parse_ts(str(final.get("lastRotationTime")))
                assert begun is not None and ended is not None
                inside.append((ended - begun).total_seconds())
        finally:
            operator.terminate()
            operator.wait(15)
    record("Backend rotation end to end (SoftHSM2, EC P-256)", [
        f"- rotations: {rotations}, minOverlap 1s, no consumers",
        f"- request to old key destroyed on the token: median {statistics.median(wall):.2f} s "
        f"(min {min(wall):.2f}, max {max(wall):.2f})",
        f"- of which promotion to revocation (minOverlap floor + reconcile): median "
        f"{statistics.median(inside):.2f} s",
    ])


if __name__ == "__main__":
    main()
