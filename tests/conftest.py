"""Fixtures shared by every tier: one real control plane per run, a fresh namespace per test.

Nothing here skips: a server that cannot be built or started fails the run, on CI and locally.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client, config

from keyrotor.testing.controlplane import ControlPlane
from keyrotor.testing.postgresserver import PostgresServer
from keyrotor.testing.prometheusserver import PrometheusServer
from keyrotor.testing.softhsm import SoftHsmToken, init_token
from keyrotor.testing.vaultserver import VaultServer

# Every control plane is scanned for leaked secret material as it stops (tests/secretscan.py).
pytest_plugins = ["tests.secretscan"]


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    with ControlPlane() as plane:
        yield plane


def api_client(plane: ControlPlane, user: str = "admin") -> client.ApiClient:
    configuration = client.Configuration()
    config.load_kube_config(
        config_file=str(plane.kubeconfig), context=user, client_configuration=configuration
    )
    return client.ApiClient(configuration)


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    with api_client(control_plane) as api:
        yield api


@pytest.fixture
def namespace(kube: client.ApiClient) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(kube)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    # No namespace controller runs: the namespace stays Terminating, which is harmless here.
    core.delete_namespace(name)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsmToken]:
    token = init_token(tmp_path_factory.mktemp("softhsm"))
    # SoftHSM2 reads its configuration when the module is first loaded in this process.
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(token.conf)
    yield token
    if previous is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = previous



@pytest.fixture(scope="session")
def vault() -> Iterator[VaultServer]:
    """A real Vault API server (file storage, so it survives a restart), one per run."""
    with VaultServer() as server:
        yield server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server (Debian's packages), one per run."""
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def prometheus() -> Iterator[PrometheusServer]:
    """A real Prometheus server (Debian's package) scraping every second, one per run."""
    with PrometheusServer() as server:
        yield server
