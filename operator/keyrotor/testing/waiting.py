"""Polling with a deadline: the only way tests and the demo wait for something to happen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T | None], *, timeout: float = 30.0,
             interval: float = 0.1, what: str = "condition") -> T:
    """Call ``predicate`` until it is truthy and return that value; fail at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"{what} not met within {timeout}s (last value: {last!r})")
