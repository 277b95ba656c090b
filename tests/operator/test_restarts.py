"""Rollout restarts: one pod-template change for several RotatingSecrets within the debounce
window, and no revocation before the workload's status says the rollout finished.

No controller-manager runs in the test control plane, so nothing rolls the Deployment out:
the test writes its status as the Deployment controller would, and the operator waits for it.
"""

from __future__ import annotations

import datetime
import threading
from typing import Any

import pytest
from kubernetes import client, watch

from keyrotor.kube import KubeApi
from keyrotor.restarts import annotation_key, rollout_progress
from keyrotor.testing.controlplane import ControlPlane
from tests.operator.conftest import OperatorProcess, rotating_secret
from tests.operator.helpers import events_of, wait_status

NAMES = ("alpha", "beta", "gamma")


def deployment(name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                         {"name": "app", "image": "registry.invalid/app:1"}]}}}}


@pytest.fixture
def debounced(operator: OperatorProcess) -> OperatorProcess:
    operator.extra_args = ["--restart-debounce", "3"]
    operator.stop()
    operator.start()
    return operator


def test_three_rotations_restart_the_deployment_once(
        control_plane: ControlPlane, kube: client.ApiClient, kapi: KubeApi, namespace: str,
        debounced: OperatorProcess) -> None:
    apps = client.AppsV1Api(kube)
    created = apps.create_namespaced_deployment(namespace, deployment("api"))
    templates: list[dict[str, str]] = []  # the pod template's annotations, at every change
    stop = threading.Event()

    def record() -> None:
        w = watch.Watch()
        for event in w.stream(apps.list_namespaced_deployment, namespace,
                              resource_version=created.metadata.resource_version,
                              timeout_seconds=120):
            annotations = dict(event["object"].spec.template.metadata.annotations or {})
            if not templates or templates[-1] != annotations:
                templates.append(annotations)
            if stop.is_set():
                w.stop()

    watcher = threading.Thread(target=record, daemon=True)
    watcher.start()
    for name in NAMES:
        control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=rotating_secret(
            name, generator={"random": {"length": 16}},
            rotation={"minOverlap": "0s", "maxOverlap": "5m"},
            verification={"interval": "300ms", "successesRequired": 1},
            rolloutRestartTargets=[{"kind": "Deployment", "name": "api"}]))
    for name in NAMES:
        wait_status(kapi, namespace, name, lambda s: s.get("currentVersion") == 1,
                    what=f"{name} version 1")
    stamp = datetime.datetime.now(datetime.UTC).isoformat()
    for name in NAMES:  # three rotations at once: well within the 3 s window
        kapi.annotate_rotating_secret(namespace, name, "keyrotor.io/rotate", stamp)

    def restarted(body: dict[str, Any] | None) -> bool:
        annotations = ((body or {}).get("spec", {}).get("template", {}).get("metadata", {})
                       .get("annotations") or {})
        return all(annotations.get(annotation_key(n)) == "2" for n in NAMES)

    from keyrotor.testing.waiting import wait_for

    body = wait_for(lambda: (lambda b: b if restarted(b) else None)(
        kapi.get_workload(namespace, "Deployment", "api")), timeout=60,
        what="the restart annotations")
    # The rollout has not happened (nothing wrote the status): nothing may be revoked yet.
    for name in NAMES:
        # Pending, not failing (the message within a pending spell is not rewritten per
        # round: status is written when the pass/fail/pending state changes).
        status = wait_status(kapi, namespace, name, lambda s: any(
            c["name"] == "Deployment/api" and c.get("pending")
            for c in s.get("consumers") or ()), what=f"{name} waiting for the rollout")
        assert status["phase"] == "VerifyingRetirement"
        assert status["previousVersion"] == 1
        rollout = next(c for c in status["consumers"] if c["name"] == "Deployment/api")
        assert rollout["pending"] is True and rollout["ok"] is False
    generation = body["metadata"]["generation"]
    assert generation == 2, "three rotations, one pod-template change"

    # Now play the Deployment controller: the new ReplicaSet is rolled out.
    apps.patch_namespaced_deployment_status("api", namespace, {"status": {
        "observedGeneration": generation, "replicas": 2, "updatedReplicas": 2,
        "readyReplicas": 2, "availableReplicas": 2}})
    for name in NAMES:
        status = wait_status(kapi, namespace, name,
                             lambda s: s.get("phase") == "Idle" and s.get("rotationCount") == 1,
                             what=f"{name} revoked after the rollout")
        assert "previousVersion" not in status or status["previousVersion"] is None
        # Waiting for a rollout is not a failure: no Warning event on the way.
        warnings = [e["reason"] for e in events_of(kapi, namespace, name)
                    if e["type"] == "Warning"]
        assert warnings == [], warnings
    final = kapi.get_workload(namespace, "Deployment", "api")
    assert final is not None and final["metadata"]["generation"] == 2
    stop.set()
    apps.patch_namespaced_deployment("api", namespace, {"metadata": {"labels": {"done": "1"}}})
    watcher.join(10)
    changes = [t for t in templates if t]
    assert len(changes) == 1, templates
    assert set(changes[0]) == {annotation_key(n) for n in NAMES}


@pytest.mark.parametrize(("kind", "body", "done"), [
    ("StatefulSet", {"metadata": {"generation": 3}, "spec": {"replicas": 3},
                     "status": {"observedGeneration": 3, "updatedReplicas": 2,
                                "readyReplicas": 3}}, False),
    ("StatefulSet", {"metadata": {"generation": 3}, "spec": {"replicas": 3},
                     "status": {"observedGeneration": 3, "updatedReplicas": 3,
                                "readyReplicas": 3}}, True),
    ("DaemonSet", {"metadata": {"generation": 2}, "spec": {},
                   "status": {"observedGeneration": 2, "desiredNumberScheduled": 4,
                              "updatedNumberScheduled": 4, "numberAvailable": 3}}, False),
    ("DaemonSet", {"metadata": {"generation": 2}, "spec": {},
                   "status": {"observedGeneration": 1, "desiredNumberScheduled": 4,
                              "updatedNumberScheduled": 4, "numberAvailable": 4}}, False),
    ("DaemonSet", {"metadata": {"generation": 2}, "spec": {},
                   "status": {"observedGeneration": 2, "desiredNumberScheduled": 4,
                              "updatedNumberScheduled": 4, "numberAvailable": 4}}, True),
    ("Deployment", {"metadata": {"generation": 2}, "spec": {"replicas": 2},
                    "status": {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2,
                               "availableReplicas": 2}}, False),
])
def test_rollout_progress_reads_status_like_kubectl(kind: str, body: dict[str, Any],
                                                    done: bool) -> None:
    assert rollout_progress(kind, body)[0] is done
