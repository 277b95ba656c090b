"""A corrupted ``.status`` through the reconciler (in-process, the reconciler tier's FakeApi).

``status.from_status`` refuses a status the engine cannot resume from with a ``StatusError``
naming the field (tests/security/test_bad_input.py). Here: what the reconciler makes of that.
It must not touch the Secret (a version read wrongly could be reused or revoked), must not
crash, and should say so on the object: Degraded with reason InvalidStatus and one Warning.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from keyrotor.reconciler import Reconciler
from tests.reconciler.fakeapi import NS, FakeApi

NOW = datetime.datetime(2026, 12, 3, 5, 0, tzinfo=datetime.UTC)
SPEC = {"generator": {"random": {"length": 32}}, "rotation": {"every": "720h"}}
CORRUPTED = [
    {"phase": "Generating", "currentVersion": 3, "latestVersion": 3},  # no version under way
    {"phase": "Rotating", "currentVersion": 3, "latestVersion": 3},  # no such phase
    {"currentVersion": 5, "latestVersion": 2},  # would reuse versions 3 to 5
    {"currentVersion": 1, "latestVersion": 1, "currentVersionTime": "yesterday"},
]


def _setup(status: dict[str, Any]) -> tuple[FakeApi, Reconciler]:
    api = FakeApi()
    api.add("api-key", SPEC)
    api.objects["api-key"]["status"] = status
    return api, Reconciler(api=api, clock=lambda: NOW)


@pytest.mark.parametrize("status", CORRUPTED)
async def test_a_corrupted_status_never_touches_the_secret(status: dict[str, Any]) -> None:
    api, reconciler = _setup(status)
    delay = await reconciler.reconcile(NS, "api-key")
    assert delay > 0  # backed off, not crashed
    assert api.secrets == {} and api.writes["create secrets"] == 0


@pytest.mark.parametrize("status", CORRUPTED[:1])
async def test_a_corrupted_status_is_reported_degraded_naming_the_field(
        status: dict[str, Any]) -> None:
    api, reconciler = _setup(status)
    await reconciler.reconcile(NS, "api-key")
    degraded = next(c for c in api.status("api-key").get("conditions") or ()
                    if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "InvalidStatus"
    assert degraded["message"].startswith("status.nextVersion: ")
    assert "InvalidStatus" in api.reasons()
