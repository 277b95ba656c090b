"""Generators make the material of one version; each is a small adapter behind one Protocol.

Material is a mapping from a key *suffix* to bytes. The main value has the suffix ``""``; key
pairs add ``.pub`` (public PEM), ``.jwk`` (private JWK) and ``.pub.jwk`` (public JWK). The
publisher prefixes each suffix with the slot, so the Secret holds ``current``,
``current.pub``, ``next.jwk`` and so on.

Generation is synchronous and CPU-bound (RSA-4096 takes a while): callers run it in a worker
thread so the operator's event loop never blocks on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from keyrotor.backends import Context

Material = dict[str, bytes]


def main_value(material: Material) -> bytes:
    """The value a slot stands for: the ``""`` entry, else the first one."""
    return material.get("") or next(iter(material.values()))


class Generator(Protocol):
    @property
    def kind(self) -> str: ...

    def generate(self, version: int) -> Material:
        """Make ``version`` (once: a replay returns what the first call made, where the
        material lives in a backend) and return what the Secret publishes."""
        ...

    def revoke(self, version: int) -> None:
        """Destroy ``version`` where it lives, if anywhere but the Secret. Idempotent."""
        ...


def recoverable(generator: Generator) -> bool:
    """Whether ``generator.generate(version)`` hands back an existing version (it lives in a
    backend: Vault, an HSM) rather than making new material (random, local keys: what the
    Secret held is lost with it)."""
    return bool(getattr(generator, "recoverable", False))


KINDS = ("random", "symmetric", "keyPair", "vault", "hsm")


def from_spec(spec: dict[str, Any], ctx: Context | None = None, *,
              keep_history: int = 0) -> Generator:
    """The generator for ``spec.generator``; ``SpecError`` names the field when it is unusable."""
    from keyrotor.errors import SpecError
    from keyrotor.generators import local

    chosen = [k for k in KINDS if spec.get(k) is not None]
    if len(chosen) != 1:
        raise SpecError("spec.generator", f"set exactly one of {', '.join(KINDS)}")
    kind = chosen[0]
    settings = spec[kind]
    if kind == "random":
        return local.RandomString.from_spec(settings)
    if kind == "symmetric":
        return local.SymmetricKey.from_spec(settings)
    if kind == "keyPair":
        return local.KeyPair.from_spec(settings)
    if ctx is None:
        raise SpecError(f"spec.generator.{kind}", "needs the operator's Kubernetes context")
    if kind == "vault":
        from keyrotor.backends import vault

        return vault.from_spec(settings, ctx, keep_history=keep_history)
    from keyrotor.backends.hsm import Hsm

    return Hsm.from_spec(settings, ctx)
