"""The reconciler tier fails a test that leaves asyncio tasks behind (a leaked waiter per sleep
was once 2,000 pending tasks after 1,000 sleeps)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    before = asyncio.all_tasks()
    yield
    await asyncio.sleep(0)  # let cancelled tasks finish
    leaked = [t for t in asyncio.all_tasks() - before
              if t is not asyncio.current_task() and not t.done()]
    assert not leaked, f"tasks left pending: {leaked}"
