"""The three slots of a rotating secret and how each engine effect changes them.

``current`` (present this), ``next`` (staged: accept it, do not present it yet) and ``previous``
(still accepted, no longer presented). :func:`apply` is the single definition of what Issue,
Stage, PromoteTo and Revoke do to them. The Kubernetes Secret publisher and the engine's
property tests both use it, so the tests check the same code that writes Secrets.

Every effect is idempotent, keyed by version: replaying one after a crash changes nothing, and
material for a version is generated at most once per slot write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from keyrotor.engine.model import Activate, Effect, Issue, PromoteTo, Revoke, Stage
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
