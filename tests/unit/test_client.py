"""The consumer library on a folder laid out exactly as kubelet mounts a Secret: files that
link into ``..data``, which links to a timestamped folder swapped atomically on update."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from keyrotor.client import Rejected, RotatingSecret, SecretError


class KubeletMount:
    """Writes Secret updates the way kubelet's AtomicWriter does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0

    def write(self, data: dict[str, bytes]) -> None:
        self.generation += 1
        folder = self.root / f"..2026_11_23_{self.generation:04d}"
        folder.mkdir()
        for key, value in data.items():
            (folder / key).write_bytes(value)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(folder.name)
        os.replace(tmp, self.root / "..data")  # the atomic swap
        for key in data:
            link = self.root / key
            if not link.is_symlink():
                link.symlink_to(Path("..data") / key)
        for stale in self.root.iterdir():
            if stale.is_symlink() and stale.name not in data and not stale.name.startswith(".."):
                stale.unlink()


@pytest.fixture
def mount(tmp_path: Path) -> KubeletMount:
    root = tmp_path / "api-key"
    root.mkdir()
    m = KubeletMount(root)
    m.write({"current": b"v1-secret-value"})
    return m


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return value or 0.0


def test_verify_accepts_every_slot_and_reloads_on_swap(mount: KubeletMount) -> None:
    registry = CollectorRegistry()
    now = [0.0]
    secret = RotatingSecret(mount.root, refresh=1.0, registry=registry, clock=lambda: now[0])
    assert secret.verify("v1-secret-value") == "current"
    assert secret.verify(b"v2-secret-value") is None

    mount.write({"current": b"v1-secret-value", "next": b"v2-secret-value"})
    assert secret.verify(b"v2-secret-value") is None  # not looked again yet (refresh 1 s)
    now[0] = 1.5
    assert secret.verify(b"v2-secret-value") == "next"
    mount.write({"current": b"v2-secret-value", "previous": b"v1-secret-value"})
    now[0] = 3.0
    assert secret.verify("v1-secret-value") == "previous"
    assert secret.current() == b"v2-secret-value"
    assert sample(registry, "keyrotor_client_reloads_total", secret="api-key") == 2
    assert sample(registry, "keyrotor_client_verifications_total",
                  secret="api-key", slot="none") == 2


def test_presenter_falls_back_to_previous(mount: KubeletMount) -> None:
    registry = CollectorRegistry()
    mount.write({"current": b"new-key-000000", "previous": b"old-key-000000"})
    secret = RotatingSecret(mount.root, refresh=0, registry=registry)
    target_accepts = {b"old-key-000000"}  # OneKey: the target was not switched yet

    def call(key: bytes) -> str:
        if key not in target_accepts:
            raise Rejected("HTTP 401")
        return "ok"

    assert secret.call_with_fallback(call) == "ok"
    target_accepts = {b"new-key-000000"}
    assert secret.call_with_fallback(call) == "ok"
    target_accepts = set()
    with pytest.raises(Rejected):
        secret.call_with_fallback(call)
    assert sample(registry, "keyrotor_client_presentations_total", secret="api-key",
                  slot="previous", result="accepted") == 1
    assert sample(registry, "keyrotor_client_presentations_total", secret="api-key",
                  slot="current", result="rejected") == 2


def test_hmac_helpers(mount: KubeletMount) -> None:
    secret = RotatingSecret(mount.root, refresh=0, registry=CollectorRegistry())
    signature = secret.sign(b"payload")
    mount.write({"current": b"v2-secret-value", "previous": b"v1-secret-value"})
    assert secret.verify_signature(b"payload", signature) == "previous"
    assert secret.verify_signature(b"payload", secret.sign(b"payload")) == "current"
    assert secret.verify_signature(b"other", signature) is None


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="does not exist: mount the Secret"):
        RotatingSecret(tmp_path / "absent", registry=CollectorRegistry())
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "password").write_text("x")
    with pytest.raises(SecretError, match="has no 'current' key"):
        RotatingSecret(empty, registry=CollectorRegistry())
