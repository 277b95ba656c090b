"""Typed reads of a spec's fields: the value, or a :class:`SpecError` that names the field.

Admission (the CRD's schema and CEL rules) already rejects most bad specs, but the operator
must not rely on it alone: a CRD applied without its validations, an older CRD version, or a
reconcile of an object admitted before a rule existed can hand the parsers anything JSON can
hold. ``RotationSpec.parse`` checks every field through these helpers first
(:mod:`keyrotor.engine.validation`), so a wrong type, an absurd number or an odd duration
becomes ``spec.<field>: <what to write>`` (the Degraded condition and one Warning event),
never a ``TypeError`` deep in a reconcile; :func:`text` does the same for credentials read
from referenced Secrets.

All helpers take the parent mapping, the key and the field's path for messages; ``default`` is
returned when the key is absent or null (the API server drops nulls on write, so both mean
"not set").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from keyrotor.engine.durations import parse_duration
from keyrotor.errors import SpecError

# The longest duration any field may hold: ten years, as the CRD allows for rotation.every.
# Longer ones overflow datetime arithmetic (year 9999) and are always a typo.
MAX_DURATION = 87600 * 3600.0
_MISSING: Any = object()


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def mapping(value: Any, field: str) -> dict[str, Any]:
    """``value`` itself when it is an object (null: empty)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(field, f"must be an object, not {_kind(value)}")
    if not all(isinstance(k, str) for k in value):
        raise SpecError(field, "has a key that is not a string")
    return dict(value)


def obj(parent: Mapping[str, Any], key: str, field: str) -> dict[str, Any]:
    """The object at ``key`` ({} when absent)."""
    return mapping(parent.get(key), field)


def string(parent: Mapping[str, Any], key: str, field: str, default: Any = _MISSING, *,
           allowed: tuple[str, ...] | None = None, nonempty: bool = False,
           max_length: int | None = None) -> Any:
    """The string at ``key``; required unless ``default`` is given."""
    value = parent.get(key)
    if value is None:
        if default is _MISSING:
            raise SpecError(field, "required")
        return default
    if not isinstance(value, str):
        raise SpecError(field, f"must be a string, not {_kind(value)}")
    if nonempty and not value.strip():
        raise SpecError(field, "must not be empty")
    if max_length is not None and len(value) > max_length:
        raise SpecError(field, f"is longer than {max_length} characters")
    if allowed is not None and value not in allowed:
        raise SpecError(field, f"unknown value {value[:64]!r}; use one of {', '.join(allowed)}")
    return value


def integer(parent: Mapping[str, Any], key: str, field: str, default: int, *,
            minimum: int | None = None, maximum: int | None = None) -> int:
    """The whole number at ``key`` within [minimum, maximum]."""
    value = parent.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            isinstance(value, float) and (not math.isfinite(value) or not value.is_integer())):
        raise SpecError(field, f"must be a whole number, not {_kind(value)}")
    number = int(value)
    if minimum is not None and number < minimum:
        raise SpecError(field, f"must be at least {minimum}")
    if maximum is not None and number > maximum:
        raise SpecError(field, f"must be at most {maximum}")
    return number


def boolean(parent: Mapping[str, Any], key: str, field: str, default: bool) -> bool:
    value = parent.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise SpecError(field, f"must be true or false, not {_kind(value)}")
    return value


def array(parent: Mapping[str, Any], key: str, field: str) -> list[Any]:
    """The list at ``key`` ([] when absent)."""
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise SpecError(field, f"must be a list, not {_kind(value)}")
    return list(value)


def duration(parent: Mapping[str, Any], key: str, field: str, default: str | None, *,
             minimum: float = 0.0, maximum: float = MAX_DURATION) -> float | None:
    """The duration at ``key`` in seconds (``default`` parsed when absent; None stays None),
    within [minimum, maximum]."""
    value = parent.get(key)
    if value is None:
        if default is None:
            return None
        value = default
    seconds = parse_duration(value, field=field)
    if not math.isfinite(seconds) or seconds > maximum:
        raise SpecError(field, f"{str(value)[:32]!r} is longer than {_written(maximum)}; use "
                        "a shorter duration")
    if seconds < minimum:
        raise SpecError(field, f"{value!r} is shorter than {_written(minimum)}")
    return seconds


def _written(seconds: float) -> str:
    """A bound as the user would write it (the grammar has no days)."""
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"


def text(raw: bytes, field: str) -> str:
    """A credential read from a Secret as text (a token, a user name, a password): bytes that
    are not UTF-8 are a SpecError naming the reference, not a UnicodeDecodeError."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise SpecError(field, "the referenced Secret key does not hold UTF-8 text") from None
