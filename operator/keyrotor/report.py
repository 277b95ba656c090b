"""Human reports: the ``keyrotor status`` table.

It answers, per RotatingSecret: where is the secret, how old is its current version, did the
last rotation verify, was the old version revoked, and when is the next rotation.
"""

from __future__ import annotations

import datetime
import io
from typing import Any

from rich.console import Console
from rich.table import Table

from keyrotor.engine.durations import format_duration
from keyrotor.status import parse_ts


def _condition(item: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (item.get("status") or {}).get("conditions") or ():
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def _age(when: str | None, now: datetime.datetime) -> str:
    parsed = parse_ts(when)
    return "-" if parsed is None else format_duration((now - parsed).total_seconds())


def _until(when: str | None, now: datetime.datetime) -> str:
    parsed = parse_ts(when)
    if parsed is None:
        return "-"
    seconds = (parsed - now).total_seconds()
    return "due now" if seconds <= 0 else f"in {format_duration(seconds)}"


def status_table(items: list[dict[str, Any]], *, now: datetime.datetime | None = None,
                 width: int = 160) -> str:
    now = now or datetime.datetime.now(datetime.UTC)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("NAMESPACE", "NAME", "SECRET", "VERSION", "AGE", "VERIFIED", "REVOKED",
                   "PHASE", "NEXT ROTATION", "MESSAGE"):
        table.add_column(column, overflow="fold")
    for item in sorted(items, key=lambda i: (i["metadata"]["namespace"], i["metadata"]["name"])):
        status = item.get("status") or {}
        verified = _condition(item, "ConsumersVerified")
        degraded = _condition(item, "Degraded")
        previous = status.get("previousVersion")
        message = degraded.get("message") if degraded.get("status") == "True" else ""
        table.add_row(
            item["metadata"]["namespace"],
            item["metadata"]["name"],
            item["spec"]["secretName"],
            str(status.get("currentVersion", "-")),
            _age(status.get("currentVersionTime"), now),
            {"True": "yes", "False": verified.get("reason", "no")}.get(
                verified.get("status", ""), "-"),
            "yes" if previous is None else f"no (v{previous} valid)",
            str(status.get("phase", "-")),
            _until(status.get("nextRotationTime"), now),
            message or "",
        )
    out = io.StringIO()
    Console(file=out, width=width, no_color=True).print(table)
    return out.getvalue()
