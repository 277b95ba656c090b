"""Fixtures for the operator tier: the CRD, a real operator process, and a leak scan.

The operator runs as a subprocess (``python -m keyrotor run``) so tests can SIGKILL it at any
moment and start it again, exactly as a pod would be. It watches only the test's namespace:
without a namespace controller, namespaces of earlier tests never go away.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from keyrotor.kube import KubeApi
from keyrotor.testing.controlplane import ControlPlane, free_port
from keyrotor.testing.toolchain import repo_root
from keyrotor.testing.waiting import wait_for
from tests import secretscan

SECRET_VALUES: set[str] = set()  # every secret value a test saw, for the leak scan


@pytest.fixture(scope="session")
def crds(control_plane: ControlPlane) -> None:
    control_plane.kubectl("apply", "--server-side", "-f", str(repo_root() / "crds"))
    control_plane.wait_established("rotatingsecrets.keyrotor.io", "rotationapprovals.keyrotor.io")


@pytest.fixture(scope="session")
def kapi(kube: client.ApiClient) -> KubeApi:
    return KubeApi(kube)


@dataclass
class OperatorProcess:
    kubeconfig: Path
    namespace: str
    log_path: Path
    metrics_port: int = field(default_factory=free_port)
    liveness_port: int = field(default_factory=free_port)
    phase_pause: float = 0.0
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    logs: list[str] = field(default_factory=list)

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "keyrotor", "run", "--kubeconfig", str(self.kubeconfig),
             "-n", self.namespace, "--metrics-port", str(self.metrics_port),
             "--liveness-port", str(self.liveness_port), "--verbose",
             "--phase-pause", str(self.phase_pause), *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        wait_for(self.metrics, timeout=30, what="operator metrics endpoint")

    def slow_motion(self, phase_pause: float = 1.0) -> None:
        """Restart with ``--phase-pause``: each persisted phase lasts at least that long."""
        self.stop()
        self.phase_pause = phase_pause
        self.start()

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last status write, like an OOM kill or a node loss."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> str:
        text = self.fetch(f"http://127.0.0.1:{self.metrics_port}/metrics")
        secretscan.note(f"metrics of the operator at :{self.metrics_port}", text)  # last one
        return text

    def fetch(self, url: str) -> str:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            return ""

    def metric(self, metric_name: str, /, **labels: str) -> float | None:
        for line in self.metrics().splitlines():
            if not line.startswith((metric_name + "{", metric_name + " ")):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def scanned_operator(plane: ControlPlane, namespace: str, tmp_path: Path, *,
                     extra_args: Sequence[str] = (),
                     before_scan: Callable[[], None] | None = None,
                     ) -> Iterator[OperatorProcess]:
    """An operator process for one test; afterwards its log is printed and everything it
    produced is scanned for secret material. For fixtures (whose teardown always runs)."""
    proc = OperatorProcess(kubeconfig=plane.kubeconfig, namespace=namespace,
                           log_path=tmp_path / "operator.log", extra_args=list(extra_args))
    proc.start()
    yield proc
    metrics_text = proc.metrics()
    proc.stop()
    print(f"---- operator log ({proc.log_path}) ----\n{proc.log_text()[-20000:]}")
    if before_scan is not None:
        before_scan()
    _scan_for_leaks(plane, namespace, proc.log_text(), metrics_text)


@pytest.fixture
def operator(control_plane: ControlPlane, crds: None, namespace: str,
             tmp_path: Path) -> Iterator[OperatorProcess]:
    with scanned_operator(control_plane, namespace, tmp_path) as proc:
        yield proc


def remember_secret(secret: dict[str, Any] | None) -> None:
    """Record every value of a keyrotor Secret, so the leak scan can look for it."""
    for key, value in ((secret or {}).get("data") or {}).items():
        if key in ("jwks.json", "versions.json") or key.endswith(
                (".pub", ".pub.jwk", ".key-version", ".username")):
            continue  # public parts and version numbers may be published anywhere
        raw = base64.b64decode(value)
        SECRET_VALUES.add(value)
        with contextlib.suppress(UnicodeDecodeError):
            SECRET_VALUES.add(raw.decode())


def _scan_for_leaks(plane: ControlPlane, namespace: str, logs: str, metrics_text: str) -> None:
    """Invariant 5: no secret value in logs, events, status, annotations or metrics."""
    secrets = json.loads(plane.kubectl("get", "secrets", "-n", namespace, "-o", "json").stdout)
    for item in secrets["items"]:
        if (item["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == \
                "keyrotor":
            remember_secret(item)
            # The Secret's own annotations are part of the scan too.
            annotations = json.dumps(item["metadata"].get("annotations") or {})
            for value in SECRET_VALUES:
                if len(value) >= 12:  # shorter strings match by chance
                    assert value not in annotations, "secret material in Secret annotations"
    events = plane.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    objects = plane.kubectl("get", "rotatingsecrets", "-n", namespace, "-o", "json").stdout
    haystacks = {"operator log": logs, "metrics": metrics_text, "events": events,
                 "RotatingSecrets (status, annotations)": objects}
    for value in SECRET_VALUES:
        if len(value) < 12:
            continue
        for where, text in haystacks.items():
            assert value not in text, f"secret material found in {where}"


def rotating_secret(name: str, **spec: Any) -> str:
    body = {"apiVersion": "keyrotor.io/v1alpha1", "kind": "RotatingSecret",
            "metadata": {"name": name}, "spec": {"secretName": name, **spec}}
    return yaml.safe_dump(body)
