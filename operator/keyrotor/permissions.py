"""The startup permission check: ask the API server what this operator may do, before it tries.

A missing verb otherwise shows up as kopf retrying a watch, or as a 403 deep inside a rotation.
keyrotor asks first with SelfSubjectAccessReviews (which every authenticated user may create)
and logs one line per missing permission naming the verb, the resource, the namespace and why
keyrotor needs it. It does not stop: a RotatingSecret that hits the missing permission later is
marked Degraded with reason ``PermissionDenied`` (see :mod:`keyrotor.errors`), and the others
keep working.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from keyrotor import metrics

log = logging.getLogger("keyrotor.permissions")


@dataclass(frozen=True)
class Need:
    group: str
    resource: str
    verb: str
    why: str
    subresource: str = ""
    # In the operator's own namespace (the Lease's), not in each watched one.
    own: bool = False
    # One object only (a Role's resourceNames); empty: any object.
    object_name: str = ""

    @property
    def name(self) -> str:
        resource = f"{self.resource}.{self.group}" if self.group else self.resource
        return f"{resource}/{self.subresource}" if self.subresource else resource


NEEDS: tuple[Need, ...] = (
    *(Need("keyrotor.io", "rotatingsecrets", verb, "to watch RotatingSecrets")
      for verb in ("get", "list", "watch")),
    Need("keyrotor.io", "rotatingsecrets", "patch",
         "to remove the finalizer of keyrotor before 0.2 on deletion"),
    Need("keyrotor.io", "rotatingsecrets", "patch", "to write the status", "status"),
    *(Need("", "secrets", verb, "to publish versions in the Secret it owns")
      for verb in ("get", "create", "update")),
    Need("", "secrets", "delete", "to apply deletionPolicy Delete"),
    *(Need("", "secrets", verb, "to notice a deleted or hand-edited Secret (a metadata-only "
           "watch of the Secrets labelled app.kubernetes.io/managed-by=keyrotor)")
      for verb in ("list", "watch")),
    Need("", "events", "create", "to post events"),
    *(Need("keyrotor.io", "rotationapprovals", verb, "to judge emergency revocation approvals "
           "(keyrotor revoke-now) and delete each one, with its code, once judged")
      for verb in ("get", "list", "watch", "delete")),
    *(Need("", "configmaps", verb, "to keep the audit trail's chain head (ConfigMap "
           "keyrotor-audit-head)", own=True) for verb in ("get", "create", "patch")),
    *(Need("", "secrets", verb, "to read the TOTP approvers and record each judged code "
           "(Secret keyrotor-approvers)", own=True, object_name="keyrotor-approvers")
      for verb in ("get", "update")),
)


def missing(api_client: Any, namespaces: Sequence[str], needs: Iterable[Need] = NEEDS,
            own_namespace: str | None = None) -> list[tuple[str, Need]]:
    """The (namespace, need) pairs this identity lacks; ``""`` means cluster-wide. The needs
    marked ``own`` are checked in ``own_namespace`` only (None: not checked). Blocking."""
    from keyrotor.kube import KubeApi

    api = api_client if isinstance(api_client, KubeApi) else KubeApi(api_client)
    lacking = []
    needs = tuple(needs)
    pairs = [(namespace, need) for namespace in namespaces or [""] for need in needs
             if not need.own]
    if own_namespace:
        pairs += [(own_namespace, need) for need in needs if need.own]
    for namespace, need in pairs:
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"resourceAttributes": {
                      "namespace": namespace, "group": need.group, "verb": need.verb,
                      "resource": need.resource, "subresource": need.subresource,
                      "name": need.object_name}}}
        answer = api.request(
            "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=review,
            verb="create", resource="selfsubjectaccessreviews.authorization.k8s.io") or {}
        allowed = bool((answer.get("status") or {}).get("allowed"))
        metrics.PERMISSION_MISSING.labels(namespace, need.verb, need.name).set(
            0 if allowed else 1)
        if not allowed:
            lacking.append((namespace, need))
    return lacking


def report(lacking: list[tuple[str, Need]]) -> None:
    for namespace, need in lacking:
        where = f"in namespace {namespace}" if namespace else "cluster-wide"
        log.error("permission check: this operator may not %s %s %s (needed %s); grant the "
                  "verb to its ServiceAccount (Helm chart: rbac, watchNamespaces)",
                  need.verb, need.name, where, need.why)
    if not lacking:
        log.info("permission check: every permission the operator needs is granted")
