"""When the next rotation is due: ``every`` (a duration after the current version was promoted)
or ``schedule`` (cron, UTC, parsed by cronsim). Pure functions of the spec and a timestamp."""

from __future__ import annotations

import datetime

from cronsim import CronSim, CronSimError

ALIASES = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def _expand(expr: str) -> str:
    return ALIASES.get(expr.strip(), expr)


def validate_cron(expr: str, *, field: str) -> None:
    from keyrotor.errors import SpecError

    try:
        CronSim(_expand(expr), datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
    except (CronSimError, ValueError) as exc:
        raise SpecError(field, f"{expr!r} is not a valid cron expression ({exc}); use five "
                        "fields such as '0 3 * * 1'") from exc


def next_after(expr: str, after: datetime.datetime) -> datetime.datetime:
    """The first cron fire strictly after ``after``."""
    fire: datetime.datetime = next(CronSim(_expand(expr), after))
    return fire


def next_rotation_time(*, every: float | None, schedule: str | None,
                       since: datetime.datetime | None) -> datetime.datetime | None:
    """When the version created at ``since`` is due for rotation; None means only on demand."""
    if since is None:
        return None
    if every is not None:
        return since + datetime.timedelta(seconds=every)
    if schedule is not None:
        return next_after(schedule, since)
    return None
