"""``keyrotor run`` never imports the official ``kubernetes`` package: its import alone weighed
more than keyrotor's state at a thousand objects (issue 10). kopf logs in through keyrotor's
login handler, and leader election, the permission check, the Secret watch and every reconcile
go through keyrotor.kubehttp. The operator runs as ``keyrotor run`` does, with an exit hook
that prints which modules it holds once it has stopped."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from keyrotor.kube import KubeApi
from keyrotor.testing.controlplane import ControlPlane
from keyrotor.testing.waiting import wait_for
from tests.operator.conftest import OperatorProcess, rotating_secret
from tests.operator.helpers import wait_status

# `python -m keyrotor ARGS`, plus: at exit, print the modules the process holds.
LAUNCHER = """
import atexit, runpy, sys
atexit.register(lambda: print("MODULES", sorted(k for k, v in sys.modules.items() if v)))
runpy.run_module("keyrotor", run_name="__main__", alter_sys=True)
"""


def test_operator_never_imports_the_official_client(
        control_plane: ControlPlane, crds: None, kapi: KubeApi, namespace: str,
        tmp_path: Path) -> None:
    proc = OperatorProcess(kubeconfig=control_plane.kubeconfig, namespace=namespace,
                           log_path=tmp_path / "operator.log")
    with open(proc.log_path, "wb") as log:
        proc.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, "run", "--kubeconfig", str(proc.kubeconfig),
             "-n", namespace, "--metrics-port", str(proc.metrics_port),
             "--liveness-port", str(proc.liveness_port), "--leader-elect",
             "--leader-election-namespace", namespace],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.metric("keyrotor_leader") == 1, timeout=30, what="leadership")
        control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=rotating_secret(
            "thin", generator={"random": {"length": 24}}))
        wait_status(kapi, namespace, "thin", lambda s: s.get("currentVersion") == 1)
        control_plane.kubectl("delete", "secret", "thin", "-n", namespace)  # the watch sees it
        wait_status(kapi, namespace, "thin", lambda s: s.get("currentVersion") == 2)
    finally:
        proc.stop()
    log = proc.log_text()
    assert proc.proc.returncode == 0, log[-3000:]
    modules = set(ast.literal_eval(log.rsplit("MODULES ", 1)[1].splitlines()[0]))
    assert {"kopf", "keyrotor.kubehttp", "keyrotor.reconciler"} <= modules
    official = sorted(m for m in modules if m == "kubernetes" or m.startswith("kubernetes."))
    assert official == [], official
    assert "permission check: every permission" in log
    assert "released the Lease" in log
