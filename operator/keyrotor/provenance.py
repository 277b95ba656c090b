"""What the audit trail says of a step: which action it was and who asked for it.

Kubernetes does not record the user behind a write in the object, but it does record the
field manager (``kubectl-annotate``, ``helm``, ``argocd-controller``, ``kubectl-client-side-
apply``): ``metadata.managedFields`` names, for every field, the manager that last set it. That
is what the audit trail can honestly name without an audit webhook of the API server: the
manager that set the ``keyrotor.io/rotate`` annotation for a manual trigger, the manager that
last changed ``spec`` for a configuration change. An emergency revocation names its approvers,
whose identity a TOTP code proves. Everything else is keyrotor's own schedule and protocol.

A leaf module on plain dicts: the reconciler calls it, and so can tests.
"""

from __future__ import annotations

from typing import Any

from keyrotor.audit import Action

# Event reasons (the engine's, named once there) and the audit action each one records.
ACTIONS: dict[str, Action] = {
    "Issued": Action.ISSUED,
    "RotationStarted": Action.STARTED,
    "Staged": Action.STAGED,
    "Accepted": Action.ACCEPTED,
    "Activated": Action.ACTIVATED,
    "Promoted": Action.PROMOTED,
    "Retired": Action.RETIRED,
    "Revoked": Action.REVOKED,
    "SecretDrift": Action.SECRET_REPAIRED,
    "ApprovalAccepted": Action.APPROVAL_ACCEPTED,
    "ApprovalRejected": Action.APPROVAL_REJECTED,
    "ApproverLocked": Action.APPROVER_LOCKED,
    "EmergencyApproved": Action.EMERGENCY_APPROVED,
    "EmergencyRevoked": Action.EMERGENCY_REVOKED,
    "EmergencyExpired": Action.EMERGENCY_EXPIRED,
    "EmergencyRejected": Action.EMERGENCY_REJECTED,
}
APPROVAL_ACTIONS = frozenset({Action.APPROVAL_ACCEPTED, Action.APPROVAL_REJECTED,
                              Action.APPROVER_LOCKED})
OPERATOR = "keyrotor"


def manager_of(meta: dict[str, Any], *path: str) -> str | None:
    """The field manager that last set the field at ``path`` (``"metadata", "annotations",
    "keyrotor.io/rotate"``, or ``"spec"`` for any of it), the latest one if several did."""
    found: list[tuple[str, str]] = []
    for entry in meta.get("managedFields") or ():
        fields = entry.get("fieldsV1") or {}
        for part in path:
            fields = fields.get(f"f:{part}") if isinstance(fields, dict) else None
            if fields is None:
                break
        if fields is not None and entry.get("manager"):
            found.append((str(entry.get("time") or ""), str(entry["manager"])))
    return max(found)[1] if found else None


def fingerprints(*secrets: dict[str, Any] | None) -> dict[str, str]:
    """Version -> keyed fingerprint, as the Secrets' annotations carry them (never material):
    ``{"v7": "3f1c..."}``. Later Secrets win (the one about to be written)."""
    out: dict[str, str] = {}
    for secret in secrets:
        annotations = ((secret or {}).get("metadata") or {}).get("annotations") or {}
        for slot in ("previous", "current", "next"):
            version = annotations.get(f"keyrotor.io/{slot}-version")
            print_ = annotations.get(f"keyrotor.io/{slot}-fingerprint")
            if version and print_:
                out[f"v{version}"] = print_
    return out
