"""The PKCS#11 backend against a real SoftHSM2 token."""

from __future__ import annotations

import hashlib
from typing import Any

import pkcs11
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from pkcs11 import Attribute, Mechanism, ObjectClass

from keyrotor.backends import BackendConflict, BackendUnavailable, Context
from keyrotor.backends.hsm import Hsm
from keyrotor.testing.softhsm import SoftHsmToken


def backend(token: SoftHsmToken, *, key: str = "AES-256", pin: str | None = None,
            label: str | None = None) -> Hsm:
    def read(name: str, key_name: str) -> bytes:
        assert (name, key_name) == ("hsm-pin", "pin")
        return (pin or token.pin).encode()

    spec: dict[str, Any] = {"module": token.module, "tokenLabel": label or token.label,
                            "pinSecretRef": {"name": "hsm-pin"}, "key": key,
                            "labelPrefix": f"test-{key.lower()}"}
    return Hsm.from_spec(spec, Context(namespace="ns", name="rs", read_secret_key=read))


def objects(token: SoftHsmToken, label: str) -> list[Any]:
    lib = pkcs11.lib(token.module)
    with lib.get_token(token_label=token.label).open(user_pin=token.pin) as session:
        return [(o.object_class, o[Attribute.EXTRACTABLE] if o.object_class !=
                 ObjectClass.PUBLIC_KEY else None)
                for o in session.get_objects({Attribute.LABEL: label})]


def test_aes_key_lives_and_dies_on_the_token(softhsm: SoftHsmToken) -> None:
    hsm = backend(softhsm)
    first = hsm.generate(1)
    assert first[""].decode() == (f"pkcs11:token={softhsm.label};object=test-aes-256-v1;"
                                  "id=keyrotor-1")
    assert hsm.generate(1) == first  # a replay reuses the object
    assert objects(softhsm, "test-aes-256-v1") == [(ObjectClass.SECRET_KEY, False)]
    hsm.generate(2)
    hsm.revoke(1)
    assert objects(softhsm, "test-aes-256-v1") == []
    assert len(objects(softhsm, "test-aes-256-v2")) == 1
    hsm.revoke(1)  # idempotent


def test_ec_key_pair_signs_on_the_token(softhsm: SoftHsmToken) -> None:
    hsm = backend(softhsm, key="EC-P256")
    material = hsm.generate(1)
    public = serialization.load_pem_public_key(material[".pub"])
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    lib = pkcs11.lib(softhsm.module)
    with lib.get_token(token_label=softhsm.label).open(user_pin=softhsm.pin) as session:
        private = session.get_key(ObjectClass.PRIVATE_KEY, label="test-ec-p256-v1")
        assert private[Attribute.EXTRACTABLE] is False
        # SoftHSM2 signs a digest (CKM_ECDSA); the digest is made here.
        digest = hashlib.sha256(b"hello").digest()
        raw = private.sign(digest, mechanism=Mechanism.ECDSA)
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    public.verify(utils.encode_dss_signature(r, s), digest,
                  ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    hsm.revoke(1)
    assert objects(softhsm, "test-ec-p256-v1") == []


def test_errors_say_what_is_wrong(softhsm: SoftHsmToken) -> None:
    with pytest.raises(BackendConflict, match="rejected the PIN in Secret hsm-pin"):
        backend(softhsm, pin="00000000").generate(1)
    with pytest.raises(BackendUnavailable, match="PKCS#11 token 'absent'"):
        backend(softhsm, label="absent").generate(1)
