"""Targets: external systems that must learn of each version before consumers rely on it.

A generator makes a version's material; a target is where that material becomes valid: a
PostgreSQL role's password, a key registered with a service over HTTP. The operator calls:

* :meth:`Target.describe` when material is made, to add what the Secret publishes besides the
  value (the PostgreSQL user name, say);
* :meth:`Target.activate` to make a version valid at the target. TwoKeys activates before the
  version is staged (the target accepts old and new); OneKey activates after presenters hold
  it as ``current`` (the target swaps, and presenters fall back until they reload);
* :meth:`Target.revoke` after the Secret no longer holds the version;
* :meth:`Target.check` for a consumer of kind ``target``: does the target accept this version?

Every call is idempotent and synchronous (the reconciler runs it in a worker thread).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from keyrotor.generators import Material

if TYPE_CHECKING:
    from keyrotor.backends import Context

KINDS = ("postgres", "webhook")
USERNAME = ".username"  # material suffix of a login name (the postgres target publishes it)


class Target(Protocol):
    @property
    def kind(self) -> str: ...

    def describe(self, version: int, material: Material) -> Material: ...

    def activate(self, version: int, material: Material) -> None: ...

    def revoke(self, version: int) -> None: ...

    def check(self, material: Material) -> tuple[bool, str]:
        """(accepted?, a message that never carries the material)."""
        ...


def from_spec(spec: dict[str, Any] | None, ctx: Context) -> Target | None:
    """The target for ``spec.target`` (None when there is none)."""
    from keyrotor.errors import SpecError

    if not spec:
        return None
    chosen = [k for k in KINDS if spec.get(k) is not None]
    if len(chosen) != 1:
        raise SpecError("spec.target", f"set exactly one of {', '.join(KINDS)}")
    if chosen[0] == "postgres":
        from keyrotor.targets.postgres import PostgresTarget

        return PostgresTarget.from_spec(spec["postgres"], ctx)
    from keyrotor.targets.webhook import WebhookTarget

    return WebhookTarget.from_spec(spec["webhook"], ctx)
