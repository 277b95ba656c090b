"""The three slots of a rotating secret and how each engine effect changes them.

``current`` (present this), ``next`` (staged: accept it, do not present it yet) and ``previous``
(still accepted, no longer presented). :func:`apply` is the single definition of what Issue,
Stage, PromoteTo and Revoke do to them. The Kubernetes Secret publisher and the engine's
property tests both use it, so the tests check the same code that writes Secrets.

Every effect is idempotent, keyed by version: replaying one after a crash changes nothing, and
material for a version is generated at most once per slot write.

No effect but :class:`~keyrotor.engine.model.Issue` starts from empty slots, and none leaves
``current`` empty: an effect applied to a Secret that was deleted (or whose ``current`` was
edited away) raises :class:`SlotError` (reason ``SecretDrift``) instead of writing a Secret that
holds only ``next`` or only ``versions.json``; the reconciler then repairs the Secret.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from keyrotor.engine.model import (
    Activate,
    Effect,
    EmergencyRevoke,
    Issue,
    PromoteTo,
    Republish,
    Revoke,
    Stage,
)
from keyrotor.errors import PermanentError, Reason

M = TypeVar("M")


class SlotError(PermanentError):
    """The slots are not in a state the effect can apply to (e.g. edited by hand)."""

    reason = Reason.SECRET_DRIFT


@dataclass(frozen=True)
class Versioned(Generic[M]):
    version: int
    material: M


@dataclass(frozen=True)
class Slots(Generic[M]):
    current: Versioned[M] | None = None
    next: Versioned[M] | None = None
    previous: Versioned[M] | None = None

    def filled(self) -> dict[str, Versioned[M]]:
        named = {"current": self.current, "next": self.next, "previous": self.previous}
        return {k: v for k, v in named.items() if v is not None}


def _holds(slot: Versioned[M] | None, version: int) -> bool:
    return slot is not None and slot.version == version


def apply(effect: Effect, slots: Slots[M], generate: Callable[[int], M]) -> Slots[M]:
    """The slots after ``effect``; ``generate(version)`` is called only when material is new."""
    if isinstance(effect, Republish):
        return _republish(effect, slots, generate)
    if isinstance(effect, EmergencyRevoke):
        # Whatever the Secret holds (even nothing): the new version alone, nothing older.
        kept = next((v for v in slots.filled().values() if v.version == effect.version), None)
        return Slots(current=kept or Versioned(effect.version, generate(effect.version)))
    if not isinstance(effect, Issue) and slots.current is None:
        raise SlotError(f"the Secret holds no current version (deleted or edited?); "
                        f"{type(effect).__name__} of version {effect.version} would publish "
                        "a Secret without one")
    after = _apply(effect, slots, generate)
    if after.current is None:  # not reached by today's effects; the invariant, stated once
        raise SlotError("refusing to write a Secret without a current version")
    return after


def _republish(effect: Republish, slots: Slots[M], generate: Callable[[int], M]) -> Slots[M]:
    held = {v.version: v for v in slots.filled().values()}

    def take(version: int | None) -> Versioned[M] | None:
        if version is None:
            return None
        return held.get(version) or Versioned(version, generate(version))

    return Slots(current=take(effect.current), next=take(effect.next),
                 previous=take(effect.previous))


def _apply(effect: Effect, slots: Slots[M], generate: Callable[[int], M]) -> Slots[M]:
    if isinstance(effect, Issue):
        if _holds(slots.current, effect.version):
            return slots
        if slots.current is not None:
            raise SlotError(f"cannot issue version {effect.version}: version "
                            f"{slots.current.version} is already current")
        return replace(slots, current=Versioned(effect.version, generate(effect.version)))
    if isinstance(effect, Stage):
        if _holds(slots.next, effect.version):
            return slots
        if slots.previous is not None:
            raise SlotError(f"cannot stage version {effect.version} while version "
                            f"{slots.previous.version} is still previous")
        return replace(slots, next=Versioned(effect.version, generate(effect.version)))
    if isinstance(effect, PromoteTo):
        if _holds(slots.current, effect.version):
            return slots
        if slots.previous is not None:
            raise SlotError(f"cannot promote version {effect.version} while version "
                            f"{slots.previous.version} is still previous")
        if _holds(slots.next, effect.version):
            new = slots.next
        elif effect.generate:
            new = Versioned(effect.version, generate(effect.version))
        else:
            raise SlotError(f"version {effect.version} is not staged as next "
                            "(was the Secret edited by hand?)")
        return Slots(current=new, next=None, previous=slots.current)
    if isinstance(effect, Activate):
        return slots  # happens at the target; the Secret already holds the version
    if isinstance(effect, Revoke):
        if _holds(slots.previous, effect.version):
            return replace(slots, previous=None)
        return slots
    raise TypeError(f"unknown effect {effect!r}")
