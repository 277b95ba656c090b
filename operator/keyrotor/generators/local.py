"""Generators that make material in-process: random strings, symmetric keys, key pairs.

Randomness comes from ``secrets`` (the OS CSPRNG); key pairs from ``cryptography``; JWKs from
``jwcrypto`` with RFC 7638 thumbprints as ``kid``, so a verifier can pick the key that signed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import string
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwcrypto import jwk

from keyrotor.errors import SpecError
from keyrotor.generators import Material

ALPHANUMERIC = string.ascii_letters + string.digits


def _one_of(field: str, value: str, allowed: tuple[str, ...] | dict[str, int]) -> str:
    """``value`` if it is allowed; else a SpecError that lists what is."""
    if value not in allowed:
        raise SpecError(field, f"unknown value {value!r}; use one of {', '.join(allowed)}")
    return value


@dataclass(frozen=True)
class RandomString:
    length: int = 32
    encoding: str = "base64url"
    alphabet: str | None = None
    kind: str = "random"

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> RandomString:
        encoding = _one_of("spec.generator.random.encoding", spec.get("encoding", "base64url"),
                           ("base64url", "hex", "alphanumeric", "custom"))
        made = cls(length=int(spec.get("length", 32)), encoding=encoding,
                   alphabet=spec.get("alphabet"))
        if made.encoding == "custom":
            if not made.alphabet or len(set(made.alphabet)) < 2:
                raise SpecError("spec.generator.random.alphabet",
                                "needs at least two distinct characters")
            if len(set(made.alphabet)) != len(made.alphabet):
                raise SpecError("spec.generator.random.alphabet",
                                "repeats characters, which would bias the output; list each "
                                "character once")
        if made.length < 16:
            raise SpecError("spec.generator.random.length", "must be at least 16")
        return made

    def generate(self, version: int) -> Material:
        if self.encoding == "base64url":
            value = secrets.token_urlsafe(self.length)
        elif self.encoding == "hex":
            value = secrets.token_hex(self.length)
        else:
            alphabet = ALPHANUMERIC if self.encoding == "alphanumeric" else self.alphabet or ""
            value = "".join(secrets.choice(alphabet) for _ in range(self.length))
        return {"": value.encode()}

    def revoke(self, version: int) -> None:
        """Nothing to do: the value lives only in the Secret."""


SYMMETRIC_SIZES = {"AES-128": 16, "AES-256": 32, "HMAC-SHA256": 32}


@dataclass(frozen=True)
class SymmetricKey:
    algorithm: str
    kind: str = "symmetric"

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> SymmetricKey:
        return cls(algorithm=_one_of("spec.generator.symmetric.algorithm",
                                     spec.get("algorithm", ""), SYMMETRIC_SIZES))

    def generate(self, version: int) -> Material:
        return {"": secrets.token_bytes(SYMMETRIC_SIZES[self.algorithm])}

    def revoke(self, version: int) -> None:
        """Nothing to do: the key lives only in the Secret."""


PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


# Key pairs are made in threads of their own at a lower CPU priority. OpenSSL lets go of the
# GIL while it searches for primes, so each thread making a key keeps a core busy; made in the
# I/O threads (16 of them), they left the event loop's thread a 1/17 share of two cores, and
# 1,000 RSA-4096 rotations at once stretched its p99 lag to 115 ms. One thread per core, niced:
# they still use every core the loop leaves idle, and the loop runs first when it has work.
KEYGEN_NICENESS = 10
_keygen: ThreadPoolExecutor | None = None
_keygen_lock = threading.Lock()


def _lower_priority() -> None:
    # Linux applies setpriority to one thread when given its id; elsewhere: keep the default.
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid,
                       os.getpriority(os.PRIO_PROCESS, tid) + KEYGEN_NICENESS)


def keygen_pool() -> ThreadPoolExecutor:
    """The process's key generation threads (started at the first key pair)."""
    global _keygen
    with _keygen_lock:
        if _keygen is None:
            _keygen = ThreadPoolExecutor(max_workers=os.cpu_count() or 2,
                                         thread_name_prefix="keyrotor-keygen",
                                         initializer=_lower_priority)
        return _keygen


def _new_private_key(algorithm: str) -> PrivateKey:
    return keygen_pool().submit(_make_private_key, algorithm).result()


def _make_private_key(algorithm: str) -> PrivateKey:
    if algorithm == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "ECDSA-P256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "ECDSA-P384":
        return ec.generate_private_key(ec.SECP384R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=int(algorithm[4:]))


KEY_PAIR_ALGORITHMS = ("Ed25519", "ECDSA-P256", "ECDSA-P384", "RSA-2048", "RSA-3072", "RSA-4096")
JWS_ALG = {"Ed25519": "EdDSA", "ECDSA-P256": "ES256", "ECDSA-P384": "ES384",
           "RSA-2048": "RS256", "RSA-3072": "RS256", "RSA-4096": "RS256"}


@dataclass(frozen=True)
class KeyPair:
    algorithm: str
    formats: tuple[str, ...] = ("pem", "jwk")
    kind: str = "keyPair"

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> KeyPair:
        algorithm = _one_of("spec.generator.keyPair.algorithm", spec.get("algorithm", ""),
                            KEY_PAIR_ALGORITHMS)
        formats = tuple(spec.get("formats") or ("pem", "jwk"))
        return cls(algorithm=algorithm, formats=formats)

    def generate(self, version: int) -> Material:
        key = _new_private_key(self.algorithm)
        material: Material = {}
        if "pem" in self.formats:
            material[""] = key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption())
            material[".pub"] = key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        if "jwk" in self.formats:
            private = jwk.JWK.from_pyca(key)
            kid = private.thumbprint()
            extra = {"kid": kid, "alg": JWS_ALG[self.algorithm], "use": "sig"}
            priv_doc = {**json.loads(private.export_private()), **extra}
            pub_doc = {**json.loads(private.export_public()), **extra}
            material[".jwk" if "pem" in self.formats else ""] = json.dumps(
                priv_doc, sort_keys=True).encode()
            material[".pub.jwk"] = json.dumps(pub_doc, sort_keys=True).encode()
        return material

    def revoke(self, version: int) -> None:
        """Nothing to do: the key pair lives only in the Secret."""


def jwks(public_jwks: list[bytes]) -> bytes:
    """A JWKS document holding the given public JWKs (both keys during an overlap)."""
    return json.dumps({"keys": [json.loads(k) for k in public_jwks]}, sort_keys=True).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
