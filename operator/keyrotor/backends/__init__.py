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

import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from keyrotor import metrics
from keyrotor.errors import Reason, TemporaryError


class BackendError(TemporaryError):
    """A backend operation failed; ``reason`` becomes the condition and event reason."""

    reason = Reason.BACKEND_ERROR


class BackendUnavailable(BackendError):
    reason = Reason.BACKEND_UNAVAILABLE


class BackendConflict(BackendError):
    reason = Reason.BACKEND_CONFLICT


def ca_file(pem: str) -> str:
    """A file holding ``pem``, for clients (requests) that want a path. One per distinct
    bundle, named by its hash and written once (atomically): reconciles come and go, the files
    do not pile up. CA certificates are public."""
    data = pem.encode()
    path = Path(tempfile.gettempdir()) / f"keyrotor-ca-{hashlib.sha256(data).hexdigest()[:16]}.pem"
    if not path.is_file():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return str(path)


@dataclass(frozen=True)
class Context:
    """What a backend may read from Kubernetes: Secrets in the RotatingSecret's namespace."""

    namespace: str
    name: str
    read_secret_key: Callable[[str, str], bytes]


# At most this many requests to one kind of backend are in flight from one operator at a time,
# however many RotatingSecrets reconcile at once: with the per-resource backoff and jitter, a
# hundred failing resources cannot flood a backend that is struggling.
MAX_CONCURRENT = 4
_SLOTS: dict[str, threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


def _slots(backend: str) -> threading.BoundedSemaphore:
    with _SLOTS_LOCK:
        return _SLOTS.setdefault(backend, threading.BoundedSemaphore(MAX_CONCURRENT))


@contextmanager
def measured(backend: str, operation: str) -> Iterator[None]:
    """One backend request: wait for a free slot, count and time it, count errors."""
    with _slots(backend):
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
