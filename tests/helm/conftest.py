"""Fixtures for the Helm chart tier: helm built from its Go module, a control plane of its own.

``helm`` is built once per change of ``tests/helm/go.mod`` (operator/keyrotor/testing/toolchain.py)
and cached like kube-apiserver; a failed build fails the tests that need it, it never skips them.

The chart is installed into a control plane of its own (``chart_plane``), not the session's
shared one: a release owns cluster-wide objects (the CRD, a ClusterRole named ``keyrotor``)
that the operator tier also creates from ``crds/`` and ``deploy/``, and the install should meet
a cluster as a user's would, with no CRD yet. The prometheus-operator CRDs (ServiceMonitor,
PrometheusRule, from that project's Go module) are installed there so those objects apply for
real. The operator itself runs as a subprocess with the chart's arguments and a token of the
chart's ServiceAccount (:class:`ChartOperator`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from keyrotor.kube import KubeApi
from keyrotor.testing.controlplane import ControlPlane, free_port
from keyrotor.testing.processes import spawn, stop
from keyrotor.testing.toolchain import ensure_helm, prometheus_operator_crds, repo_root
from keyrotor.testing.waiting import wait_for
from tests.conftest import api_client

CHART = repo_root() / "helm" / "keyrotor"


@dataclass
class Helm:
    """The helm CLI with its own config/cache/data folders, against one kubeconfig."""

    binary: Path
    home: Path
    kubeconfig: Path | None = None

    def __call__(self, *args: str, check: bool = True,
                 input: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ,
               "HELM_CACHE_HOME": str(self.home / "cache"),
               "HELM_CONFIG_HOME": str(self.home / "config"),
               "HELM_DATA_HOME": str(self.home / "data")}
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
            env["HELM_KUBECONTEXT"] = "admin"
        result = subprocess.run([str(self.binary), *args], capture_output=True, text=True,
                                env=env, input=input, timeout=180)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def template(self, *args: str) -> list[dict[str, Any]]:
        """The objects ``helm template`` renders for the chart with ``args``."""
        text = self("template", "keyrotor", str(CHART), "--namespace", "keyrotor-system",
                    *args).stdout
        return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="session")
def helm_binary() -> Path:
    return ensure_helm()


@pytest.fixture(scope="session")
def helm(helm_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm without a cluster: lint and template."""
    return Helm(binary=helm_binary, home=tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def chart_plane() -> Iterator[ControlPlane]:
    with ControlPlane() as plane:
        plane.kubectl("apply", "--server-side",
                      *(arg for path in prometheus_operator_crds() for arg in ("-f", str(path))))
        wait_established(plane, "servicemonitors.monitoring.coreos.com",
                         "prometheusrules.monitoring.coreos.com")
        yield plane


def wait_established(plane: ControlPlane, *crds: str) -> None:
    """Poll until every CRD named is Established (kubectl wait once failed at once here)."""
    def established(name: str) -> bool:
        result = plane.kubectl("get", "crd", name, "-o", 'jsonpath={.status.conditions'
                               '[?(@.type=="Established")].status}', check=False)
        if result.returncode != 0:
            print(f"kubectl get crd {name}: {result.stderr.strip()}")
        return result.returncode == 0 and result.stdout.strip() == "True"
    for name in crds:
        wait_for(lambda name=name: established(name), timeout=60,
                 what=f"CRD {name} established")


@pytest.fixture(scope="session")
def cluster_helm(helm: Helm, chart_plane: ControlPlane) -> Helm:
    """helm against ``chart_plane`` as its admin."""
    return Helm(binary=helm.binary, home=helm.home, kubeconfig=chart_plane.kubeconfig)


@pytest.fixture(scope="session")
def chart_kapi(chart_plane: ControlPlane) -> Iterator[KubeApi]:
    with api_client(chart_plane) as api:
        yield KubeApi(api)


def create_namespace(plane: ControlPlane, name: str, **labels: str) -> str:
    body = {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels}}
    plane.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(body))
    return name


def operator_command(deployment: dict[str, Any], *, pod_name: str, metrics_port: int,
                     liveness_port: int) -> list[str]:
    """``keyrotor <args>`` as the Deployment's container would run it, on this machine.

    ``$(VAR)`` references are expanded from the container's env as the kubelet does (the
    downward API gives POD_NAME and POD_NAMESPACE); the two port values are replaced by free
    ports, as every pod has its own network namespace but these processes share one.
    """
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {}
    for var in container.get("env") or ():
        source = (var.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath")
        env[var["name"]] = {"metadata.name": pod_name,
                            "metadata.namespace": deployment["metadata"]["namespace"]}.get(
            source or "", var.get("value", ""))
    args = []
    for arg in container["args"]:
        for name, value in env.items():
            arg = arg.replace(f"$({name})", value)
        args.append(arg)
    ports = {"--metrics-port": str(metrics_port), "--liveness-port": str(liveness_port)}
    for flag, port in ports.items():
        assert flag in args, f"the Deployment does not pass {flag}: {args}"
        args[args.index(flag) + 1] = port
    return args


@dataclass
class ChartOperator:
    """``python -m keyrotor <the chart's args>`` with a ServiceAccount kubeconfig."""

    deployment: dict[str, Any]
    kubeconfig: Path
    log_path: Path
    pod_name: str = "keyrotor-0"
    metrics_port: int = field(default_factory=free_port)
    liveness_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def argv(self) -> list[str]:
        return operator_command(self.deployment, pod_name=self.pod_name,
                                metrics_port=self.metrics_port,
                                liveness_port=self.liveness_port)

    def start(self) -> ChartOperator:
        pod_env = {"POD_NAME": self.pod_name,
                   "POD_NAMESPACE": self.deployment["metadata"]["namespace"],
                   "PYTHONUNBUFFERED": "1", "KUBECONFIG": str(self.kubeconfig)}
        self.proc = spawn([sys.executable, "-m", "keyrotor", *self.argv,
                           "--kubeconfig", str(self.kubeconfig)], self.log_path, env=pod_env)
        return self

    def stop(self) -> None:
        stop(self.proc)

    def health(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}{path}",
                                        timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except OSError:
            return 0

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"the operator exited ({self.proc.returncode}):\n"
                                     f"{self.log_text()[-5000:]}")
            return self.health("/readyz") == 200
        wait_for(ready, timeout=timeout, what="the operator's /readyz")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def installed_deployment(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(plane.kubectl("get", "deployment", name, "-n", namespace,
                                                      "-o", "json").stdout)
    return result

