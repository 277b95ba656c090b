"""The fault tier: the operator tier's fixtures, plus a control plane of its own to break.

Tests that only kill the operator or flap a consumer use the session's control plane and the
operator tier's ``operator`` fixture. Tests that stop kube-apiserver or freeze etcd use
``fault_plane``, a second control plane started for this tier only, so no other test sees the
outage; ``fault_operator`` runs the operator against it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from keyrotor.kube import KubeApi
from keyrotor.testing.controlplane import ControlPlane
from keyrotor.testing.toolchain import repo_root
from tests.conftest import api_client
from tests.operator.conftest import OperatorProcess, crds, kapi, operator, scanned_operator

__all__ = ["crds", "kapi", "operator"]

# The poller and the mounts keep reading while the API server is away: one retry warning per
# read would bury the test's own output.
logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def _heal(plane: ControlPlane) -> None:
    """Undo what a failed test may have left broken."""
    if plane.etcd_paused:
        plane.resume_etcd()
    if not plane.apiserver_running:
        plane.start_apiserver()


@pytest.fixture(scope="session")
def fault_plane() -> Iterator[ControlPlane]:
    """A control plane of the fault tier's own, with the CRD; tests may stop its servers but
    must leave them running."""
    with ControlPlane() as plane:
        plane.kubectl("apply", "--server-side", "-f", str(repo_root() / "crds"))
        plane.wait_established("rotatingsecrets.keyrotor.io", "rotationapprovals.keyrotor.io")
        yield plane


@pytest.fixture(scope="session")
def fault_kube(fault_plane: ControlPlane) -> Iterator[client.ApiClient]:
    with api_client(fault_plane) as api:
        yield api


@pytest.fixture(scope="session")
def fault_kapi(fault_kube: client.ApiClient) -> KubeApi:
    return KubeApi(fault_kube)


@pytest.fixture
def fault_namespace(fault_plane: ControlPlane, fault_kube: client.ApiClient) -> Iterator[str]:
    name = f"f-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(fault_kube)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    _heal(fault_plane)
    core.delete_namespace(name)


@pytest.fixture
def fault_operator(fault_plane: ControlPlane, fault_namespace: str,
                   tmp_path: Path) -> Iterator[OperatorProcess]:
    with scanned_operator(fault_plane, fault_namespace, tmp_path,
                          before_scan=lambda: _heal(fault_plane)) as proc:
        yield proc
