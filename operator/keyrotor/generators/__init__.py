"""Generators make the material of one version; each is a small adapter behind one Protocol.

Material is a mapping from a key *suffix* to bytes. The main value has the suffix ``""``; key
pairs add ``.pub`` (public PEM), ``.jwk`` (private JWK) and ``.pub.jwk`` (public JWK). The
publisher prefixes each suffix with the slot, so the Secret holds ``current``,
``current.pub``, ``next.jwk`` and so on.

Generation is synchronous and CPU-bound (RSA-4096 takes a while): callers run it in a worker
thread so the operator's event loop never blocks on it.
"""

from __future__ import annotations

from typing import Any, Protocol

Material = dict[str, bytes]


class Generator(Protocol):
    @property
    def kind(self) -> str: ...

    def generate(self, version: int) -> Material:
        """Make fresh material for ``version``; never returns the same material twice."""
        ...


def from_spec(spec: dict[str, Any]) -> Generator:
    """The generator for ``spec.generator``; ``SpecError`` names the field when it is unusable."""
    from keyrotor.engine.model import SpecError
    from keyrotor.generators import local

    chosen = [k for k in ("random", "symmetric", "keyPair") if spec.get(k) is not None]
    if len(chosen) != 1:
        raise SpecError("spec.generator",
                        "set exactly one of random, symmetric or keyPair")
    kind = chosen[0]
    settings = spec[kind]
    if kind == "random":
        return local.RandomString.from_spec(settings)
    if kind == "symmetric":
        return local.SymmetricKey.from_spec(settings)
    return local.KeyPair.from_spec(settings)
