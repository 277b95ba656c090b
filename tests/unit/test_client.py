"""The consumer library on a folder laid out exactly as kubelet mounts a Secret: files that
link into ``..data``, which links to a timestamped folder swapped atomically on update."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from keyrotor.client import Rejected, RotatingSecret, SecretError
from keyrotor.testing.secretmount import KubeletMount


@pytest.fixture
def mount(tmp_path: Path) -> KubeletMount:
    root = tmp_path / "api-key"
    root.mkdir()
    m = KubeletMount(root)
    m.write({"current": b"v1-secret-value"})
    return m


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(s.value for metric in registry.collect() for s in metric.samples
               if s.name == name and labels.items() <= s.labels.items())


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
                  slot="current", result="rejected") == 3  # 1 + 2 (tried again last)

    # The target swaps between the first two attempts: previous is refused as well, and
    # current, tried once more, now works. Found by the OneKey zero-downtime test.
    swapped = []

    def swapping(key: bytes) -> str:
        if key == b"new-key-000000" and not swapped:
            swapped.append(True)  # the swap happens right after this refusal
            raise Rejected("HTTP 401")
        if key == b"old-key-000000":
            raise Rejected("HTTP 401")
        return "ok"

    assert secret.call_with_fallback(swapping) == "ok"
    assert sample(registry, "keyrotor_client_presentations_total", secret="api-key",
                  slot="current", result="accepted") == 2


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


def test_jwt_signed_by_kid_verifies_through_a_rotation(tmp_path: Path) -> None:
    """Tokens name their key by kid: one signed before a promotion still verifies while its
    key is previous, and stops verifying once that key is gone from the Secret."""
    from keyrotor.generators.local import KeyPair, jwks

    generator = KeyPair(algorithm="Ed25519")
    v1, v2 = generator.generate(1), generator.generate(2)

    def publish(m: KubeletMount, slots: dict[str, dict[str, bytes]]) -> None:
        data = {f"{slot}{suffix}": value for slot, material in slots.items()
                for suffix, value in material.items()}
        data["jwks.json"] = jwks([material[".pub.jwk"] for material in slots.values()])
        m.write(data)

    root = tmp_path / "signing"
    m = KubeletMount(root)
    publish(m, {"current": v1})
    secret = RotatingSecret(root, refresh=0, registry=CollectorRegistry())
    old_token = secret.sign_jwt({"sub": "alice"})
    assert secret.verify_jwt(old_token) == ("current", {"sub": "alice"})

    publish(m, {"current": v2, "previous": v1})  # promoted: v1 stays for verification
    new_token = secret.sign_jwt({"sub": "bob"})
    assert new_token.split(".")[0] != old_token.split(".")[0]  # another kid in the header
    assert secret.verify_jwt(new_token) == ("current", {"sub": "bob"})
    assert secret.verify_jwt(old_token) == ("previous", {"sub": "alice"})

    publish(m, {"current": v2})  # revoked
    assert secret.verify_jwt(old_token) is None
    tampered = new_token[:-4] + ("AAAA" if not new_token.endswith("AAAA") else "BBBB")
    assert secret.verify_jwt(tampered) is None
    assert secret.verify_jwt("not a token") is None


def test_versions_are_reported_when_the_secret_names_them(mount: KubeletMount) -> None:
    registry = CollectorRegistry()
    mount.write({"current": b"v8-secret-value", "previous": b"v7-secret-value",
                 "versions.json": b'{"current": 8, "previous": 7}'})
    secret = RotatingSecret(mount.root, refresh=0, registry=registry)
    assert secret.version() == 8 and secret.version("previous") == 7
    assert secret.verify("v7-secret-value") == "previous"
    assert sample(registry, "keyrotor_client_verifications_total", slot="previous",
                  version="7") == 1
    assert sample(registry, "keyrotor_client_secret_version", slot="current") == 8
    assert sample(registry, "keyrotor_client_secret_version", slot="previous") == 7
    mount.write({"current": b"v8-secret-value", "versions.json": b'{"current": 8}'})
    assert secret.version("previous") is None
    # The emptied slot's gauge is gone, not left at a stale value.
    assert registry.get_sample_value("keyrotor_client_secret_version",
                                     {"secret": "api-key", "slot": "previous"}) is None
