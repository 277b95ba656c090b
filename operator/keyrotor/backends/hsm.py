"""A PKCS#11 token (an HSM, or SoftHSM2 in tests) through python-pkcs11.

Version N is a key object on the token labelled ``<labelPrefix>-v<N>``: a non-extractable
AES-256 secret key, or an EC P-256 key pair. The material never leaves the token; the Secret
publishes an RFC 7512 ``pkcs11:`` URI naming the object (and, for EC, the public key as PEM).
Generation is idempotent (an object with that label is reused after a crash); revocation
destroys every object with the label.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

import pkcs11
from cryptography.hazmat.primitives import serialization
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from keyrotor.backends import BackendConflict, BackendUnavailable, Context, measured
from keyrotor.engine.fields import text
from keyrotor.errors import SpecError
from keyrotor.generators import Material

KEYS = ("AES-256", "EC-P256")
_LOCK = threading.RLock()  # PKCS#11 libraries are loaded once per process; serialise sessions
_LIBS: dict[str, Any] = {}


def _lib(module: str) -> Any:
    with _LOCK:
        if module not in _LIBS:
            _LIBS[module] = pkcs11.lib(module)
        return _LIBS[module]


@dataclass
class Hsm:
    # A version's key stays in the token until revoked: generate() hands it back (drift repair).
    recoverable: ClassVar[bool] = True
    spec: dict[str, Any]
    ctx: Context
    kind: str = "hsm"

    @classmethod
    def from_spec(cls, spec: dict[str, Any], ctx: Context) -> Hsm:
        for key in ("module", "tokenLabel", "pinSecretRef"):
            if not spec.get(key):
                raise SpecError(f"spec.generator.hsm.{key}", "required")
        if spec.get("key", "AES-256") not in KEYS:
            raise SpecError("spec.generator.hsm.key",
                            f"unknown value {spec.get('key')!r}; use one of {', '.join(KEYS)}")
        return cls(spec, ctx)

    @property
    def _prefix(self) -> str:
        return str(self.spec.get("labelPrefix") or f"{self.ctx.namespace}-{self.ctx.name}")

    def label(self, version: int) -> str:
        return f"{self._prefix}-v{version}"

    def _session(self) -> Any:
        ref = self.spec["pinSecretRef"]
        pin = text(self.ctx.read_secret_key(ref["name"], ref.get("key", "pin")),
                   "spec.generator.hsm.pinSecretRef")
        try:
            token = _lib(self.spec["module"]).get_token(token_label=self.spec["tokenLabel"])
            return token.open(user_pin=pin, rw=True)
        except (pkcs11.NoSuchToken, pkcs11.TokenNotPresent, pkcs11.DeviceRemoved,
                pkcs11.DeviceError) as exc:
            raise BackendUnavailable(f"PKCS#11 token {self.spec['tokenLabel']!r}: "
                                     f"{type(exc).__name__}") from None
        except pkcs11.PinIncorrect:
            raise BackendConflict(f"PKCS#11 token {self.spec['tokenLabel']!r} rejected the PIN "
                                  f"in Secret {ref['name']}") from None
        except RuntimeError as exc:  # the module itself could not be loaded
            raise BackendUnavailable(f"PKCS#11 module {self.spec['module']}: {exc}") from None

    def _uri(self, label: str, key_id: bytes) -> bytes:
        return (f"pkcs11:token={quote(self.spec['tokenLabel'])};object={quote(label)};"
                f"id={quote(key_id)}").encode()

    def generate(self, version: int) -> Material:
        label, key_id = self.label(version), f"keyrotor-{version}".encode()
        with _LOCK, self._session() as session, measured("hsm", "generate"):
            existing = list(session.get_objects({Attribute.LABEL: label}))
            if self.spec.get("key", "AES-256") == "AES-256":
                if not existing:
                    session.generate_key(KeyType.AES, 256, label=label, id=key_id, store=True,
                                         template={Attribute.EXTRACTABLE: False,
                                                   Attribute.SENSITIVE: True})
                return {"": self._uri(label, key_id)}
            public = next((o for o in existing if o.object_class == ObjectClass.PUBLIC_KEY),
                          None)
            if public is None:
                params = session.create_domain_parameters(
                    KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(
                        "secp256r1")}, local=True)
                public, _ = params.generate_keypair(
                    store=True, label=label, id=key_id,
                    private_template={Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True})
            der = encode_ec_public_key(public)
            pem = serialization.load_der_public_key(der).public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            return {"": self._uri(label, key_id), ".pub": pem}

    def revoke(self, version: int) -> None:
        with _LOCK, self._session() as session, measured("hsm", "destroy"):
            for obj in list(session.get_objects({Attribute.LABEL: self.label(version)})):
                obj.destroy()
