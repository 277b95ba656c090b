"""Go-style durations ("720h", "1h30m", "500ms"), the format Kubernetes users already know.

The CRD's CEL rules accept the same grammar, so what passes admission parses here.
"""

from __future__ import annotations

import re

from keyrotor.errors import SpecError

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_WHOLE = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h))+$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, *, field: str = "duration") -> float:
    """Seconds in ``text``; a :class:`SpecError` naming ``field`` and the form otherwise (a
    ``ValueError`` too, for callers outside the operator)."""
    if not isinstance(text, str) or not _WHOLE.match(text):
        raise SpecError(field, f"{text!r} is not a duration; use a form such as 720h, 90m, "
                        "1h30m, 15s or 500ms")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text))


def format_duration(seconds: float) -> str:
    """A short human form: 3d4h, 2h5m, 45s, 250ms."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    total = round(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{n}{u}" for n, u in parts if n][:2]
    return "".join(shown) or "0s"
