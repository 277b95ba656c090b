"""Generators make valid keys; the Secret encoding round-trips and publishes both public keys
during an overlap; probes never leak a value into their messages."""

from __future__ import annotations

import base64
import json
import os
import string
import threading

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st
from jwcrypto import jwk, jws

from keyrotor.engine.durations import parse_duration
from keyrotor.engine.model import Issue, PromoteTo, Revoke, Stage
from keyrotor.errors import SpecError
from keyrotor.generators import from_spec, local
from keyrotor.generators.local import KeyPair, RandomString
from keyrotor.probes.http import HttpProbe, redact, render
from keyrotor.publishing.secret import Owner, SecretConflict, decode
from keyrotor.publishing.secret import render as render_secret

OWNER = Owner(name="rs", namespace="ns", uid="uid-1")


@pytest.mark.parametrize(("encoding", "alphabet", "length"), [
    ("base64url", string.ascii_letters + string.digits + "-_", 43),
    ("hex", "0123456789abcdef", 64),
    ("alphanumeric", string.ascii_letters + string.digits, 32),
])
def test_random_encodings(encoding: str, alphabet: str, length: int) -> None:
    values = {RandomString(length=32, encoding=encoding).generate(1)[""].decode()
              for _ in range(50)}
    assert len(values) == 50
    for value in values:
        assert len(value) == length and set(value) <= set(alphabet)


def test_custom_alphabet_and_its_errors() -> None:
    value = from_spec({"random": {"encoding": "custom", "alphabet": "ab", "length": 64}})
    assert set(value.generate(1)[""].decode()) <= {"a", "b"}
    with pytest.raises(SpecError, match=r"spec\.generator\.random\.alphabet: repeats characters"):
        from_spec({"random": {"encoding": "custom", "alphabet": "aab"}})


@pytest.mark.parametrize(("algorithm", "kind"), [
    ("Ed25519", ed25519.Ed25519PrivateKey), ("ECDSA-P256", ec.EllipticCurvePrivateKey),
    ("ECDSA-P384", ec.EllipticCurvePrivateKey), ("RSA-2048", rsa.RSAPrivateKey),
])
def test_key_pairs_in_pem_and_jwk(algorithm: str, kind: type) -> None:
    material = KeyPair(algorithm=algorithm).generate(7)
    private = serialization.load_pem_private_key(material[""], password=None)
    assert isinstance(private, kind)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert material[".pub"] == public_pem
    # Sign with the private JWK, verify with the public one, picked by kid.
    signer = jwk.JWK.from_json(material[".jwk"])
    public = jwk.JWK.from_json(material[".pub.jwk"])
    assert "d" not in json.loads(material[".pub.jwk"])
    token = jws.JWS(b"payload")
    alg = json.loads(material[".jwk"])["alg"]
    token.add_signature(signer, protected=json.dumps({"alg": alg, "kid": signer.get("kid")}))
    verifier = jws.JWS()
    verifier.deserialize(token.serialize())
    verifier.verify(public)
    assert verifier.payload == b"payload"


def test_secret_slots_round_trip_and_jwks_during_overlap() -> None:
    gen = KeyPair(algorithm="Ed25519")
    body = render_secret(Issue(1), None, name="s", owner=OWNER, generate=gen.generate)
    assert body is not None
    body["metadata"]["uid"] = "secret-uid"
    staged = render_secret(Stage(2), body, name="s", owner=OWNER, generate=gen.generate)
    assert staged is not None
    keys = json.loads(base64.b64decode(staged["data"]["jwks.json"]))["keys"]
    assert len(keys) == 2 and all("d" not in k for k in keys)
    slots, fingerprint_key = decode(staged)
    assert slots.current is not None and slots.current.version == 1
    assert slots.next is not None and slots.next.version == 2
    assert fingerprint_key is not None and len(fingerprint_key) == 32
    # Replaying an effect changes nothing; promotion moves the slots.
    assert render_secret(Stage(2), staged, name="s", owner=OWNER, generate=gen.generate) is None
    promoted = render_secret(PromoteTo(2), staged, name="s", owner=OWNER, generate=gen.generate)
    assert promoted is not None
    annotations = promoted["metadata"]["annotations"]
    assert annotations["keyrotor.io/current-version"] == "2"
    assert annotations["keyrotor.io/previous-version"] == "1"
    assert "keyrotor.io/next-version" not in annotations
    revoked = render_secret(Revoke(1), promoted, name="s", owner=OWNER, generate=gen.generate)
    assert revoked is not None
    assert not any(k.startswith("previous") for k in revoked["data"])
    assert len(json.loads(base64.b64decode(revoked["data"]["jwks.json"]))["keys"]) == 1


def test_foreign_secret_is_never_touched() -> None:
    foreign = {"metadata": {"name": "s", "ownerReferences": [
        {"kind": "ExternalSecret", "name": "other", "uid": "x", "controller": True}]}}
    with pytest.raises(SecretConflict, match="owned by ExternalSecret other"):
        render_secret(Issue(1), foreign, name="s", owner=OWNER,
                      generate=RandomString().generate)


def test_probe_templates_and_redaction() -> None:
    values = {"candidate": "s3cr3t-value-123", "current": "old-value-456"}
    assert render("Bearer {{ candidate }}", values) == "Bearer s3cr3t-value-123"
    assert render("{{current}}", values) == "old-value-456"
    with pytest.raises(KeyError):
        render("{{ previous }}", values)
    assert redact("GET https://x/?k=s3cr3t-value-123 failed", values) == \
        "GET https://x/?k=[redacted] failed"


async def test_probe_error_message_never_carries_the_value() -> None:
    import aiohttp

    probe = HttpProbe.from_spec({"name": "api", "http": {
        "url": "http://127.0.0.1:9/check?key={{ candidate }}", "timeout": "2s"}})
    async with aiohttp.ClientSession() as session:
        result = await probe.check(session, {"candidate": "supersecretvalue42"})
    assert not result.ok
    assert "supersecretvalue42" not in result.message
    assert result.message.startswith("request failed")


@given(st.text(max_size=20))
def test_duration_parser_rejects_garbage_with_the_field_name(text: str) -> None:
    try:
        seconds = parse_duration(text, field="spec.rotation.every")
    except ValueError as exc:
        assert str(exc).startswith("spec.rotation.every: ")
        assert "720h" in str(exc)
    else:
        assert seconds >= 0 and text


@given(st.integers(0, 10**6), st.integers(0, 59), st.integers(0, 59))
def test_duration_parser_sums_units(h: int, m: int, s: int) -> None:
    assert parse_duration(f"{h}h{m}m{s}s") == h * 3600 + m * 60 + s


@pytest.mark.parametrize(("spec", "field"), [
    ({"symmetric": {"algorithm": "DES"}}, "spec.generator.symmetric.algorithm"),
    ({"keyPair": {"algorithm": "DSA"}}, "spec.generator.keyPair.algorithm"),
    ({"random": {"encoding": "base32"}}, "spec.generator.random.encoding"),
])
def test_unknown_generator_values_name_the_field(spec: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError, match=rf"^{field}: unknown value .*; use one of "):
        from_spec(spec)


def test_key_pairs_are_made_in_niced_threads_that_leave_the_event_loop_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Key generation runs in the keygen threads, at KEYGEN_NICENESS below the caller: OpenSSL
    releases the GIL while it works, so only the CPU priority keeps the event loop ahead."""
    made_in: list[tuple[str, int]] = []
    original = local._make_private_key

    def spy(algorithm: str) -> local.PrivateKey:
        tid = threading.get_native_id()
        made_in.append((threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, tid)))
        return original(algorithm)

    monkeypatch.setattr(local, "_make_private_key", spy)
    material = KeyPair.from_spec({"algorithm": "ECDSA-P256"}).generate(1)
    assert material[""].startswith(b"-----BEGIN PRIVATE KEY-----")
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    [(name, niceness)] = made_in
    assert name.startswith("keyrotor-keygen")
    assert niceness == min(19, mine + local.KEYGEN_NICENESS)
