"""Rate limiting in the consumer library: a token bucket per identity, spent by failed
verifications only; an empty bucket blocks the identity for block_time, and while blocked
verify answers "limited" even for a right value.

With an injected clock (no sleeps), and with an injected comparator to show that the same
comparisons run whether the value is right or wrong and whether the limit applies; plus a
statistical timing check with a generous bound. Bounded memory (LRU) and thread safety.
"""

from __future__ import annotations

import base64
import hmac
import statistics
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from keyrotor.client import LIMITED, RateLimit, RateLimiter, RotatingSecret
from keyrotor.engine.model import Issue
from keyrotor.generators.local import RandomString
from keyrotor.publishing.secret import Owner, render
from keyrotor.testing.secretmount import KubeletMount

RIGHT = b"right-value-0123456789abcdefghijklmnopqrst"
WRONG = b"wrong-value-0123456789abcdefghijklmnopqrst"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def mount(tmp_path: Path) -> KubeletMount:
    m = KubeletMount(tmp_path / "api-key")
    m.write({"current": RIGHT, "previous": b"previous-value-0123456789abcdefghijklmno"})
    return m


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return sum(s.value for metric in registry.collect() for s in metric.samples
               if s.name == name and labels.items() <= s.labels.items())


def test_failures_empty_the_bucket_and_block_the_identity(mount: KubeletMount) -> None:
    clock, registry = Clock(), CollectorRegistry()
    secret = RotatingSecret(mount.root, refresh=10**9, registry=registry, clock=clock,
                            rate_limit=RateLimit(burst=3, per_second=0.1, block_time=60))
    assert [secret.verify(WRONG, identity="mallory") for _ in range(3)] == [None] * 3
    # Blocked now: even the right value is refused, and the refusal is false in `if`.
    result = secret.verify(RIGHT, identity="mallory")
    assert result == "limited" and result is LIMITED and not result
    assert secret.verify(WRONG, identity="mallory") == "limited"
    # Others are not affected, and no identity means no limit.
    assert secret.verify(RIGHT, identity="alice") == "current"
    assert secret.verify(RIGHT) == "current"
    assert sample(registry, "keyrotor_client_verification_failures_total",
                  secret="api-key") == 3
    assert sample(registry, "keyrotor_client_rate_limited_total", secret="api-key") == 2
    clock.now += 59.9
    assert secret.verify(RIGHT, identity="mallory") == "limited"
    clock.now += 0.2  # the block is over; the bucket refilled 6 tokens meanwhile, to 3
    assert secret.verify(RIGHT, identity="mallory") == "current"
    assert [secret.verify(WRONG, identity="mallory") for _ in range(3)] == [None] * 3
    assert secret.verify(RIGHT, identity="mallory") == "limited"


def test_successes_spend_nothing_and_the_bucket_refills(mount: KubeletMount) -> None:
    clock = Clock()
    secret = RotatingSecret(mount.root, refresh=10**9, registry=CollectorRegistry(),
                            clock=clock,
                            rate_limit=RateLimit(burst=2, per_second=1.0, block_time=30))
    for _ in range(100):
        assert secret.verify(RIGHT, identity="alice") == "current"
    assert secret.verify(WRONG, identity="bob") is None
    clock.now += 1.0  # one token back
    assert secret.verify(WRONG, identity="bob") is None
    assert secret.verify(RIGHT, identity="bob") == "current"  # one token left: not blocked
    assert secret.verify(WRONG, identity="bob") is None  # the last one: blocked from here
    assert secret.verify(RIGHT, identity="bob") == "limited"


def test_memory_is_bounded_least_recently_seen_first() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(burst=1, block_time=60, max_identities=100), clock)
    assert limiter.attempt("first", failed=True) is False  # emptied: blocked
    for n in range(99):
        limiter.attempt(f"filler-{n}", failed=False)
    assert limiter.blocked("first") and len(limiter) == 100
    limiter.attempt("first", failed=False)  # seen again: most recent now
    for n in range(10_000):
        limiter.attempt(f"spray-{n}", failed=True)
    assert len(limiter) == 100
    assert not limiter.blocked("first")  # forgotten: an attacker spraying identities only
    # evicts entries, which is why the block is per identity and not a security boundary


def test_the_limiter_is_thread_safe() -> None:
    clock = Clock()  # frozen: no refill, so exactly `burst` failures pass
    limiter = RateLimiter(RateLimit(burst=500, per_second=1.0, block_time=60), clock)
    passed: list[int] = []
    lock = threading.Lock()

    def hammer() -> None:
        mine = sum(1 for _ in range(400) if not limiter.attempt("mallory", failed=True))
        with lock:
            passed.append(mine)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(passed) == 500


def decoyed_secret(tmp_path: Path) -> tuple[KubeletMount, bytes, bytes]:
    made = RandomString()
    body = render(Issue(1), None, name="api-key", owner=Owner("api-key", "ns", "u", decoys=3),
                  generate=made.generate)
    assert body is not None
    data = {k: base64.b64decode(v) for k, v in body["data"].items()}
    mount = KubeletMount(tmp_path / "api-key")
    mount.write(data)
    decoy = next(v for k, v in data.items() if k.startswith("retired-"))
    return mount, data["current"], decoy


def test_the_same_comparisons_run_whatever_the_value_and_the_limit(tmp_path: Path) -> None:
    mount, right, decoy = decoyed_secret(tmp_path)
    calls: list[tuple[bytes, bytes]] = []

    def compare(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return hmac.compare_digest(a, b)

    clock = Clock()
    secret = RotatingSecret(mount.root, refresh=10**9, registry=CollectorRegistry(),
                            clock=clock, compare=compare,
                            rate_limit=RateLimit(burst=2, per_second=0.0, block_time=60))
    wrong = b"w" * len(right)

    def held_compared(value: bytes, identity: str) -> tuple[str | None, list[bytes]]:
        calls.clear()
        result = secret.verify(value, identity=identity)
        assert all(a == value for a, _ in calls)
        return result, [b for _, b in calls]

    results = {}
    for label, value, identity in [("right", right, "a"), ("wrong", wrong, "a"),
                                   ("decoy", decoy, "a"), ("right while limited", right, "a"),
                                   ("wrong while limited", wrong, "a"),
                                   ("decoy while limited", decoy, "a")]:
        results[label] = held_compared(value, identity)
    assert [r for r, _ in results.values()] == ["current", None, "decoy",
                                               "limited", "limited", "limited"]
    sequences = {tuple(held) for _, held in results.values()}
    assert len(sequences) == 1, "the comparisons differ between cases"
    (sequence,) = sequences
    assert len(sequence) == 1 + 3  # every slot (current) and every decoy, every time


def test_timing_does_not_tell_a_right_value_from_a_wrong_one_while_limited(
        tmp_path: Path) -> None:
    mount, right, _ = decoyed_secret(tmp_path)
    clock = Clock()
    secret = RotatingSecret(mount.root, refresh=10**9, registry=CollectorRegistry(),
                            clock=clock,
                            rate_limit=RateLimit(burst=1, per_second=0.0, block_time=1e9))
    wrong = bytes(b ^ 1 for b in right)  # same length, differs in every byte
    assert secret.verify(wrong, identity="m") is None  # blocked from here on
    samples: dict[bytes, list[float]] = {right: [], wrong: []}
    for _ in range(3000):  # interleaved, so drift in machine load hits both alike
        for value in (right, wrong):
            started = time.perf_counter_ns()
            assert secret.verify(value, identity="m") == "limited"
            samples[value].append(time.perf_counter_ns() - started)
    medians = {v: statistics.median(s) for v, s in samples.items()}
    # Generous: the machine is shared. A short-circuit (answering before comparing) would
    # make one side several times faster than the other.
    ratio = max(medians.values()) / min(medians.values())
    print(f"median verify while limited: right {medians[right] / 1000:.1f} µs, "
          f"wrong {medians[wrong] / 1000:.1f} µs, ratio {ratio:.3f}")
    assert ratio < 1.25
