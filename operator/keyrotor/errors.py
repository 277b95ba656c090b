"""keyrotor's one error hierarchy, a leaf module: everything may import it, it imports nothing.

Like kopf's ``TemporaryError`` / ``PermanentError``, every error says which of two kinds it is:

* :class:`TemporaryError`: worth retrying by itself (a backend restarting, a write conflict);
* :class:`PermanentError`: needs a person (a spec that cannot work, a missing permission, a
  Secret owned by someone else). keyrotor still retries it, slowly, and an edit of the spec
  wakes it at once.

Each class carries the :class:`Reason` that becomes the ``Degraded`` condition's reason and the
Warning event's reason, so no table maps types to reasons elsewhere. Messages name the field or
the permission and the fix; they never carry secret material.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class Reason(StrEnum):
    """Condition and event reasons for failures, named once."""

    # S105 takes the "Secret..." names below for passwords; they are reasons.

    INVALID_SPEC = "InvalidSpec"
    SECRET_CONFLICT = "SecretConflict"  # noqa: S105
    SECRET_DRIFT = "SecretDrift"  # noqa: S105
    BACKEND_ERROR = "BackendError"
    BACKEND_UNAVAILABLE = "BackendUnavailable"
    BACKEND_CONFLICT = "BackendConflict"
    PERMISSION_DENIED = "PermissionDenied"
    CONFLICT = "Conflict"
    API_UNAVAILABLE = "ApiUnavailable"
    INTERNAL_ERROR = "InternalError"
    AUDIT_UNAVAILABLE = "AuditUnavailable"


class KeyrotorError(Exception):
    """Base of every error keyrotor reports on a RotatingSecret."""

    reason: ClassVar[str] = Reason.INTERNAL_ERROR
    temporary: ClassVar[bool] = True


class TemporaryError(KeyrotorError):
    """Retry with backoff; it usually clears by itself."""

    temporary = True


class PermanentError(KeyrotorError):
    """Needs a person: retried slowly, and at once when the spec changes."""

    temporary = False


class SpecError(PermanentError, ValueError):
    """The spec passed admission but cannot work; ``field`` names where to look."""

    reason = Reason.INVALID_SPEC

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class PermissionDenied(PermanentError):
    """The API server answered 403: the operator's RBAC lacks ``verb`` on ``resource``."""

    reason = Reason.PERMISSION_DENIED

    def __init__(self, *, verb: str, resource: str, namespace: str | None) -> None:
        where = f" in namespace {namespace}" if namespace else " cluster-wide"
        super().__init__(
            f"the operator may not {verb} {resource}{where}: grant the verb {verb!r} on "
            f"{resource!r} to its ServiceAccount (Helm chart: rbac, watchNamespaces)")
        self.verb, self.resource, self.namespace = verb, resource, namespace


class Conflict(TemporaryError):
    """The object changed since it was read (HTTP 409): re-read and try again."""

    reason = Reason.CONFLICT


class ApiUnavailable(TemporaryError):
    """The API server did not answer in time, refused the connection, or asked to slow down
    (429/5xx); ``retry_after`` is its Retry-After, which API Priority and Fairness sets."""

    reason = Reason.API_UNAVAILABLE

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InternalError(TemporaryError):
    """An unexpected exception, wrapped so it is reported and backed off like any other."""

    reason = Reason.INTERNAL_ERROR


class AuditUnavailable(TemporaryError):
    """No audit sink took the entry: the action it describes is not taken (fail-closed, as
    Vault's audit devices are) until a sink can be written again."""

    reason = Reason.AUDIT_UNAVAILABLE
