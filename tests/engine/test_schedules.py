"""Schedules, suspension and manual triggers, decided by the engine on an injected clock."""

from __future__ import annotations

import datetime

import pytest

from keyrotor.engine.model import Phase, RotationSpec, RotationState
from keyrotor.engine.rotation import step
from keyrotor.engine.schedule import next_after, next_rotation_time
from keyrotor.errors import SpecError

T0 = datetime.datetime(2026, 3, 2, 10, 15, tzinfo=datetime.UTC)  # a Monday
IDLE = RotationState(phase=Phase.IDLE, current=4, latest=4, current_version_time=T0)


def test_cron_schedule_fires_on_the_next_matching_minute() -> None:
    assert next_after("0 3 * * 1", T0) == datetime.datetime(2026, 3, 9, 3, 0,
                                                            tzinfo=datetime.UTC)
    assert next_after("@daily", T0) == datetime.datetime(2026, 3, 3, tzinfo=datetime.UTC)
    spec = RotationSpec.parse({"rotation": {"schedule": "*/30 * * * *"}})
    due = next_rotation_time(every=None, schedule=spec.schedule, since=T0)
    assert due == datetime.datetime(2026, 3, 2, 10, 30, tzinfo=datetime.UTC)
    quiet = step(spec, IDLE, now=T0 + datetime.timedelta(minutes=10))
    assert quiet.state.phase == Phase.IDLE and quiet.effect is None
    assert quiet.requeue_after == pytest.approx(300)
    fired = step(spec, IDLE, now=due)
    assert fired.state.phase == Phase.GENERATING and fired.state.next == 5
    assert "Scheduled" in fired.events[0].message


def test_every_counts_from_the_current_version() -> None:
    spec = RotationSpec.parse({"rotation": {"every": "720h"}})
    early = step(spec, IDLE, now=T0 + datetime.timedelta(hours=719))
    assert early.state.phase == Phase.IDLE and early.requeue_after == pytest.approx(3600)
    assert early.state.message == "next rotation at 2026-04-01T10:15:00Z"
    due = step(spec, IDLE, now=T0 + datetime.timedelta(hours=720))
    assert due.state.phase == Phase.GENERATING


def test_suspend_blocks_schedule_and_trigger_but_not_the_first_version() -> None:
    spec = RotationSpec.parse({"rotation": {"every": "1h", "suspend": True}})
    later = T0 + datetime.timedelta(days=30)
    held = step(spec, IDLE, now=later, trigger="please")
    assert held.state.phase == Phase.IDLE and held.state.message == \
        "spec.rotation.suspend is true"
    first = step(spec, RotationState(), now=later)
    assert first.state.phase == Phase.GENERATING and first.state.next == 1


def test_a_trigger_acts_once() -> None:
    spec = RotationSpec.parse({})
    started = step(spec, IDLE, now=T0, trigger="a")
    assert started.state.phase == Phase.GENERATING and started.state.last_trigger == "a"
    again = step(spec, IDLE.evolve(last_trigger="a"), now=T0, trigger="a")
    assert again.state.phase == Phase.IDLE
    assert again.state.message == "no schedule; rotates only on demand"


def test_operator_side_validation_names_the_field() -> None:
    with pytest.raises(SpecError, match=r"^spec\.rotation\.schedule: '61 \* \* \* \*' is not"):
        RotationSpec.parse({"rotation": {"schedule": "61 * * * *"}})
    with pytest.raises(ValueError, match=r"^spec\.verification\.interval: 'soon' is not a"):
        RotationSpec.parse({"verification": {"interval": "soon"}})
