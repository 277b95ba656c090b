"""Backends: generators whose versions live in an external system (Vault/OpenBao, an HSM).

A backend generator makes version N *in the backend* and returns what the Secret publishes
(a value for Vault KV, a key reference for Transit and PKCS#11), and destroys version N on
revocation. Both operations are idempotent and keyed by version, like every engine effect:
keyrotor's version N is the backend's version N, so a replay after a crash recognises its own
work instead of creating a second version.

Failures are split in two. :class:`BackendUnavailable` (connection refused, 5xx, sealed) is
transient: the reconcile is retried with exponential backoff and jitter, the Degraded condition
and a Warning event say why, and nothing is revoked meanwhile. :class:`BackendConflict` means
the backend holds something keyrotor did not expect (another writer on the KV path, say): it
needs a human, and says what to do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from keyrotor import metrics


class BackendError(RuntimeError):
    """A backend operation failed; ``reason`` becomes the condition and event reason."""

    reason = "BackendError"


class BackendUnavailable(BackendError):
    reason = "BackendUnavailable"


class BackendConflict(BackendError):
    reason = "BackendConflict"


@dataclass(frozen=True)
class Context:
    """What a backend may read from Kubernetes: Secrets in the RotatingSecret's namespace."""

    namespace: str
    name: str
    read_secret_key: Callable[[str, str], bytes]


@contextmanager
def measured(backend: str, operation: str) -> Iterator[None]:
    """Count and time one backend request; count it as an error if it raises."""
    started = time.perf_counter()
    metrics.BACKEND_REQUESTS.labels(backend, operation).inc()
    try:
        yield
    except Exception:
        metrics.BACKEND_ERRORS.labels(backend, operation).inc()
        raise
    finally:
        metrics.BACKEND_DURATION.labels(backend, operation).observe(
            time.perf_counter() - started)
