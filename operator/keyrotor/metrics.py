"""Prometheus metrics (prefix ``keyrotor_``), served on the operator's metrics port.

Names follow Prometheus conventions: timestamps instead of ages (``..._timestamp_seconds``),
counters end in ``_total``, durations in ``_seconds``. Labels are the RotatingSecret's namespace
and name, never anything derived from secret material.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from keyrotor import __version__
from keyrotor.engine.model import Phase, RotationState

REGISTRY = CollectorRegistry()
LABELS = ("namespace", "name")

ROTATIONS = Counter("keyrotor_rotations_total", "Rotations finished, by result",
                    (*LABELS, "result"), registry=REGISTRY)
ROTATION_DURATION = Histogram(
    "keyrotor_rotation_duration_seconds", "Time from the start of a rotation to revocation",
    LABELS, registry=REGISTRY,
    buckets=(1, 10, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400))
CURRENT_VERSION = Gauge("keyrotor_current_version", "Version number of the current key",
                        LABELS, registry=REGISTRY)
CURRENT_CREATED = Gauge("keyrotor_current_version_created_timestamp_seconds",
                        "When the current version was promoted", LABELS, registry=REGISTRY)
NEXT_ROTATION = Gauge("keyrotor_next_rotation_timestamp_seconds",
                      "When the next scheduled rotation starts", LABELS, registry=REGISTRY)
PHASE = Gauge("keyrotor_phase", "1 for the phase each RotatingSecret is in",
              (*LABELS, "phase"), registry=REGISTRY)
OVERLAP = Gauge("keyrotor_overlap_active",
                "1 while two versions are valid (next or previous is set)", LABELS,
                registry=REGISTRY)
HOLDING = Gauge("keyrotor_rotation_holding",
                "1 while a rotation holds past maxOverlap with failing consumers", LABELS,
                registry=REGISTRY)
DEGRADED = Gauge("keyrotor_degraded", "1 while the Degraded condition is True", LABELS,
                 registry=REGISTRY)
PROBES = Counter("keyrotor_consumer_probes_total", "Consumer probes, by result",
                 (*LABELS, "consumer", "result"), registry=REGISTRY)
PROBE_FAILURES = Counter("keyrotor_consumer_probe_failures_total", "Failed consumer probes",
                         (*LABELS, "consumer"), registry=REGISTRY)
REVOCATIONS = Counter("keyrotor_revocations_total", "Versions revoked", LABELS,
                      registry=REGISTRY)
RECONCILE_ERRORS = Counter("keyrotor_reconcile_errors_total",
                           "Reconciles that failed, by reason", (*LABELS, "reason"),
                           registry=REGISTRY)
BACKEND_REQUESTS = Counter("keyrotor_backend_requests_total", "Requests to key backends",
                           ("backend", "operation"), registry=REGISTRY)
BACKEND_ERRORS = Counter("keyrotor_backend_errors_total", "Failed requests to key backends",
                         ("backend", "operation"), registry=REGISTRY)
BACKEND_DURATION = Histogram("keyrotor_backend_request_duration_seconds",
                             "Duration of requests to key backends", ("backend", "operation"),
                             registry=REGISTRY,
                             buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
LEADER = Gauge("keyrotor_leader",
               "1 while this process holds the leader Lease (or runs without election)",
               registry=REGISTRY)
LEADER_CHANGES = Counter("keyrotor_leader_changes_total",
                         "Times this process acquired the leader Lease", registry=REGISTRY)
PERMISSION_MISSING = Gauge(
    "keyrotor_permission_missing",
    "1 for each permission the operator needs but lacks (startup check and 403 answers)",
    ("namespace", "verb", "resource"), registry=REGISTRY)
APPROVALS = Counter("keyrotor_approvals_total",
                    "Emergency revocation approvals judged, by result (Accepted, WrongCode, "
                    "Replayed, Locked, LockedOut, UnknownApprover, NoRequest, OtherRequest, "
                    "RequestEnded, WrongAction)",
                    ("result",), registry=REGISTRY)
APPROVER_LOCKOUTS = Counter("keyrotor_approver_lockouts_total",
                            "Approvers locked out after too many wrong TOTP codes in a row",
                            ("approver",), registry=REGISTRY)
APPROVER_LOCKED = Gauge("keyrotor_approver_locked",
                        "1 while an approver is locked out (as last judged)", ("approver",),
                        registry=REGISTRY)
BUILD = Info("keyrotor_build", "keyrotor's version", registry=REGISTRY)
BUILD.info({"version": __version__})


def observe_state(namespace: str, name: str, state: RotationState, *,
                  next_rotation: float | None, degraded: bool) -> None:
    labels = (namespace, name)
    # One series per object, for the phase it is in: ten per object (one per phase, nine of
    # them 0) cost more memory than everything else keyrotor keeps per object.
    for phase in Phase:
        if phase != state.phase:
            with contextlib.suppress(KeyError):
                PHASE.remove(*labels, str(phase))
    PHASE.labels(*labels, str(state.phase)).set(1)
    if state.current is not None:
        CURRENT_VERSION.labels(*labels).set(state.current)
    if state.current_version_time is not None:
        CURRENT_CREATED.labels(*labels).set(state.current_version_time.timestamp())
    if next_rotation is not None:
        NEXT_ROTATION.labels(*labels).set(next_rotation)
    OVERLAP.labels(*labels).set(1 if state.next is not None or state.previous is not None else 0)
    HOLDING.labels(*labels).set(1 if state.phase == Phase.HOLDING else 0)
    DEGRADED.labels(*labels).set(1 if degraded else 0)


def forget(namespace: str, name: str) -> None:
    """Drop the series of a deleted RotatingSecret."""
    for gauge in (CURRENT_VERSION, CURRENT_CREATED, NEXT_ROTATION, OVERLAP, HOLDING, DEGRADED):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)
    for phase in Phase:
        with contextlib.suppress(KeyError):
            PHASE.remove(namespace, name, str(phase))


def serve(port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from other pods
    start_http_server(port, addr=addr, registry=REGISTRY)
