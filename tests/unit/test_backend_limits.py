"""However many reconciles run at once, few requests reach one backend at a time."""

from __future__ import annotations

import threading
import time

import pytest

from keyrotor import metrics
from keyrotor.backends import MAX_CONCURRENT, measured


def test_requests_to_one_backend_are_bounded() -> None:
    in_flight, peak = 0, 0
    lock = threading.Lock()

    def request() -> None:
        nonlocal in_flight, peak
        with measured("limit-test", "op"):
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
            time.sleep(0.02)
            with lock:
                in_flight -= 1

    threads = [threading.Thread(target=request) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert peak == MAX_CONCURRENT
    assert metrics.BACKEND_REQUESTS.labels("limit-test", "op")._value.get() == 40


def test_errors_are_counted() -> None:
    with pytest.raises(RuntimeError), measured("limit-test", "boom"):
        raise RuntimeError("down")
    assert metrics.BACKEND_ERRORS.labels("limit-test", "boom")._value.get() == 1
