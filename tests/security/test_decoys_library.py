"""Decoys without a cluster: how the Secret holds them (publishing.secret) and how the consumer
library recognises them (keyrotor.client), on a folder mounted the way kubelet mounts it.

* the Secret keyrotor writes holds spec.decoys.count decoys that look like retired versions
  (same shape and length as the real values, plausible version numbers) and are never in a
  slot, so never valid;
* they survive every write of a rotation unchanged, and are new after an emergency revocation;
* verify() answers "decoy" (false in a boolean context), calls on_decoy with the decoy's
  fingerprint (the one in the Secret's annotation), counts it, and reports it to a real HTTP
  endpoint from a background thread that retries a 503 (a standby operator) and never blocks
  verify; the report endpoint of a standby answers 503.
"""

from __future__ import annotations

import base64
import http.server
import json
import string
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from keyrotor import decoys as operator_decoys
from keyrotor.client import DECOY, RotatingSecret
from keyrotor.engine.model import EmergencyRevoke, Issue, PromoteTo, Revoke, Stage
from keyrotor.generators import Material, main_value
from keyrotor.generators.local import KeyPair, RandomString, SymmetricKey
from keyrotor.publishing.secret import (
    DECOY_ANNOTATION,
    Owner,
    decode,
    decoy_count,
    decoy_fingerprints,
    decoys_of,
    encode,
    fingerprint,
    inspect,
    render,
)
from keyrotor.testing.controlplane import free_port
from keyrotor.testing.secretmount import KubeletMount
from keyrotor.testing.waiting import wait_for

OWNER = Owner(name="api-key", namespace="ns", uid="uid-1", decoys=2)


def values(secret: dict[str, Any]) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in secret["data"].items()}


def decoy_values(secret: dict[str, Any]) -> dict[str, bytes]:
    return {k: v for k, v in values(secret).items() if k.startswith("retired-")}


def generator(kind: str = "random") -> Any:
    return {"random": RandomString(), "hex": RandomString(encoding="hex"),
            "symmetric": SymmetricKey("AES-256"),
            "keypair": KeyPair(algorithm="ECDSA-P256", formats=("pem", "jwk"))}[kind]


def write(effect: Any, secret: dict[str, Any] | None, owner: Owner = OWNER,
          kind: str = "random") -> dict[str, Any]:
    made = generator(kind)

    def generate(version: int) -> Material:
        material: Material = made.generate(version)
        return material

    body = render(effect, secret, name="api-key", owner=owner, generate=generate)
    assert body is not None
    body["metadata"]["resourceVersion"] = str(int((secret or {}).get("metadata", {})
                                                  .get("resourceVersion", "0")) + 1)
    return body


def rotate(secret: dict[str, Any], version: int, **kw: Any) -> list[dict[str, Any]]:
    """Every Secret a TwoKeys rotation to ``version`` writes."""
    out = [write(Stage(version), secret, **kw)]
    out.append(write(PromoteTo(version), out[-1], **kw))
    out.append(write(Revoke(version - 1), out[-1], **kw))
    return out


def test_decoy_count_follows_the_crd_default() -> None:
    assert decoy_count({}) == 0
    assert decoy_count({"decoys": {}}) == 1  # the CRD's default when decoys is set
    assert decoy_count({"decoys": {"count": 3}}) == 3
    assert decoy_count({"decoys": {"count": 0}}) == 0
    assert decoy_count({"decoys": {"count": 99}}) == 5


@pytest.mark.parametrize("kind", ["random", "hex", "symmetric", "keypair"])
def test_decoys_look_like_retired_versions_and_are_never_in_a_slot(kind: str) -> None:
    secret = write(Issue(1), None, kind=kind)
    for version in (2, 3):
        secret = rotate(secret, version, kind=kind)[-1]
    data = values(secret)
    real = main_value({"": data["current"]})
    listed = json.loads(data["versions.json"])
    assert listed["current"] == 3 and set(listed) == {"current", "retired"}
    assert len(listed["retired"]) == 2
    fakes = decoy_values(secret)
    assert sorted(fakes) == sorted(f"retired-{n}" for n in listed["retired"])
    # Plausible: retired numbers below the current version once there is room (3 > 2).
    assert all(int(n) < 3 for n in listed["retired"])
    for value in fakes.values():
        assert value != real
        if kind == "keypair":
            assert value.startswith(b"-----BEGIN PRIVATE KEY-----")
            assert abs(len(value) - len(real)) <= 4  # DER lengths vary by a byte or two
        else:
            assert len(value) == len(real)
        if kind == "hex":
            assert set(value.decode()) <= set(string.hexdigits.lower())
        if kind == "random":
            assert set(value.decode()) <= set(string.ascii_letters + string.digits + "-_")
    # Never a slot: the slots hold the real versions only.
    slots, _ = decode(secret, verified=True)
    assert {s: v.version for s, v in slots.filled().items()} == {"current": 3}
    assert all(v.material[""] not in fakes.values() for v in slots.filled().values())
    # The annotation names them by fingerprint only, and the drift check finds nothing wrong.
    key = data["fingerprint.key"]
    assert decoy_fingerprints(secret) == {fingerprint(key, v) for v in fakes.values()}
    annotations = json.dumps(secret["metadata"]["annotations"])
    assert not any(v.decode(errors="replace") in annotations for v in fakes.values())
    assert inspect(secret, OWNER, "api-key") == ({"current": 3}, [])


def test_decoys_are_stable_across_writes_and_new_after_an_emergency_revocation() -> None:
    first = write(Issue(1), None)
    before = {d.value for d in decoys_of(first, values(first)["fingerprint.key"])}
    assert len(before) == 2
    history = [first]
    for version in (2, 3, 4):
        history += rotate(history[-1], version)
    for secret in history:
        key = values(secret)["fingerprint.key"]
        assert {d.value for d in decoys_of(secret, key)} == before
        assert set(decoy_values(secret).values()) == before
    # A write that changes nothing writes nothing (no flicker, no churn).
    assert render(Revoke(3), history[-1], name="api-key", owner=OWNER,
                  generate=lambda v: {"": b"x" * 43}) is None
    # Callers that do not know the count (None) keep what is there.
    kept = write(Stage(5), history[-1], owner=Owner("api-key", "ns", "uid-1"))
    assert set(decoy_values(kept).values()) == before
    # Fewer wanted: the extra goes; none: all go, and versions.json is as before decoys.
    one = write(Stage(5), history[-1], owner=Owner("api-key", "ns", "uid-1", decoys=1))
    assert len(decoy_values(one)) == 1 and set(decoy_values(one).values()) < before
    none = write(Stage(5), history[-1], owner=Owner("api-key", "ns", "uid-1", decoys=0))
    assert decoy_values(none) == {} and DECOY_ANNOTATION not in none["metadata"]["annotations"]
    assert json.loads(values(none)["versions.json"]) == {"current": 4, "next": 5}
    # Emergency revocation: the thief knows the old decoys; new ones replace them.
    revoked = write(EmergencyRevoke(5, revoke=(4,)), history[-1])
    after = set(decoy_values(revoked).values())
    assert len(after) == 2 and not after & before


def test_a_changed_count_is_not_drift_and_re_marking_applies_it() -> None:
    secret = write(Issue(1), None)
    before = set(decoy_values(secret).values())
    three = Owner("api-key", "ns", "uid-1", decoys=3)
    # The Secret is intact: inspect finds nothing wrong, but the owner's marks call for a
    # rewrite, which keeps the two decoys and adds one (what the reconciler's re-mark does).
    assert inspect(secret, three, "api-key") == ({"current": 1}, [])
    assert not three.marked_on(secret) and OWNER.marked_on(secret)
    slots, key = decode(secret)
    assert key is not None
    body = encode(slots, name="api-key", owner=three, base=secret, fingerprint_key=key)
    after = set(decoy_values(body).values())
    assert len(after) == 3 and before < after and three.marked_on(body)
    assert decode(body, verified=True)[0] == slots


def test_an_edited_decoy_is_drift_and_is_replaced() -> None:
    secret = write(Issue(1), None)
    name = sorted(decoy_values(secret))[0]
    secret["data"][name] = base64.b64encode(b"A" * 43).decode()
    _, problems = inspect(secret, OWNER, "api-key")
    assert len(problems) == 1 and name in problems[0] and problems[0].endswith("were edited")
    repaired = write(Issue(1), secret)
    assert len(decoy_values(repaired)) == 2 and b"A" * 43 not in decoy_values(repaired).values()


@pytest.fixture
def mounted(tmp_path: Path) -> tuple[KubeletMount, dict[str, Any]]:
    mount = KubeletMount(tmp_path / "api-key")
    secret = write(Issue(1), None)
    mount.write(values(secret))
    return mount, secret


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return sum(s.value for metric in registry.collect() for s in metric.samples
               if s.name == name and labels.items() <= s.labels.items())


def test_verify_recognises_a_decoy_and_never_accepts_it(
        mounted: tuple[KubeletMount, dict[str, Any]]) -> None:
    mount, secret = mounted
    registry = CollectorRegistry()
    seen: list[tuple[str, str | None]] = []
    consumer = RotatingSecret(mount.root, refresh=0, registry=registry,
                              on_decoy=lambda fp, who: seen.append((fp, who)))
    real = values(secret)["current"]
    fakes = sorted(decoy_values(secret).values())
    assert consumer.verify(real) == "current"
    for fake in fakes:
        result = consumer.verify(fake, identity="203.0.113.7")
        assert result == "decoy" and result is DECOY
        assert not result  # `if secret.verify(token):` never accepts a decoy
    assert consumer.verify(b"x" * 43) is None
    key = values(secret)["fingerprint.key"]
    assert seen == [(fingerprint(key, f), "203.0.113.7") for f in fakes]
    assert set(consumer.decoy_fingerprints()) == decoy_fingerprints(secret)
    assert sample(registry, "keyrotor_client_decoy_presentations_total", secret="api-key") == 2
    assert sample(registry, "keyrotor_client_verification_failures_total",
                  secret="api-key") == 3
    assert sample(registry, "keyrotor_client_verifications_total", secret="api-key",
                  slot="none") == 3
    # A file named like a decoy but without the keyed tag is just an unknown value.
    mount.write({**values(secret), "retired-9": b"y" * 43})
    assert consumer.verify(b"y" * 43) is None


def test_the_library_still_knows_the_decoys_after_operator_writes(
        mounted: tuple[KubeletMount, dict[str, Any]]) -> None:
    mount, secret = mounted
    consumer = RotatingSecret(mount.root, refresh=0, registry=CollectorRegistry())
    fakes = set(decoy_values(secret).values())
    known = set(consumer.decoy_fingerprints())
    for written in rotate(secret, 2):
        mount.write(values(written))
        assert set(consumer.decoy_fingerprints()) == known
        assert all(consumer.verify(f) == "decoy" for f in fakes)
        assert consumer.verify(values(written)["current"]) == "current"


class _Collector(http.server.BaseHTTPRequestHandler):
    answers: ClassVar[list[int]] = []
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status = self.answers.pop(0) if self.answers else 202
        if status == 202:
            self.received.append({"path": self.path, **body})
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, type[_Collector]]]:
    handler = type("Collector", (_Collector,), {"answers": [503, 503], "received": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()


def test_reports_go_to_the_operator_in_the_background_and_retry_a_standby(
        mounted: tuple[KubeletMount, dict[str, Any]],
        collector: tuple[str, type[_Collector]], monkeypatch: pytest.MonkeyPatch) -> None:
    mount, secret = mounted
    url, handler = collector
    monkeypatch.setenv("KEYROTOR_REPORT_URL", url)
    monkeypatch.setenv("POD_NAMESPACE", "payments")
    registry = CollectorRegistry()
    consumer = RotatingSecret(mount.root, refresh=0, registry=registry)
    consumer._reporter.backoff = 0.05  # type: ignore[union-attr]
    fake = sorted(decoy_values(secret).values())[0]
    started = time.monotonic()
    assert consumer.verify(fake, identity="10.1.2.3") == "decoy"
    assert time.monotonic() - started < 0.1, "verify waited for the report"
    wait_for(lambda: handler.received, timeout=10, what="the decoy report")
    key = values(secret)["fingerprint.key"]
    assert handler.received == [{"path": "/v1/decoy-reports", "namespace": "payments",
                                 "name": "api-key", "fingerprint": fingerprint(key, fake),
                                 "identity": "10.1.2.3"}]
    assert sample(registry, "keyrotor_client_decoy_reports_total", result="sent") == 1
    assert fake.decode() not in json.dumps(handler.received)


def test_an_unreachable_operator_never_fails_verify(
        mounted: tuple[KubeletMount, dict[str, Any]]) -> None:
    mount, secret = mounted
    registry = CollectorRegistry()
    consumer = RotatingSecret(mount.root, refresh=0, registry=registry,
                              report_url=f"http://127.0.0.1:{free_port()}", namespace="ns")
    consumer._reporter.backoff = 0.01  # type: ignore[union-attr]
    fake = sorted(decoy_values(secret).values())[0]
    assert consumer.verify(fake) == "decoy"
    wait_for(lambda: sample(registry, "keyrotor_client_decoy_reports_total",
                            result="failed") == 1, timeout=15, what="the report to give up")


async def test_a_standby_operator_answers_503() -> None:
    reports = operator_decoys.DecoyReports()  # never started: what a standby serves
    app = web.Application()
    reports.add_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        import aiohttp

        async with aiohttp.ClientSession() as session, session.post(
                f"http://127.0.0.1:{port}/v1/decoy-reports",
                json={"namespace": "ns", "name": "n", "fingerprint": "hmac-sha256:" + "0" * 16,
                      "identity": "x"}) as response:
            assert response.status == 503
    finally:
        await runner.cleanup()
