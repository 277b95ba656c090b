"""The operator works with exactly the RBAC in deploy/, as its ServiceAccount, and no more."""

from __future__ import annotations

import yaml

from keyrotor.kube import KubeApi
from keyrotor.testing.controlplane import ControlPlane
from keyrotor.testing.toolchain import repo_root
from keyrotor.testing.waiting import wait_for
from tests.operator.conftest import OperatorProcess, rotating_secret
from tests.operator.helpers import wait_status


def test_operator_runs_as_its_service_account(control_plane: ControlPlane, crds: None,
                                              kapi: KubeApi, namespace: str, tmp_path) -> None:
    # Server-side, as its header says: the dashboard ConfigMap may outgrow the annotation that
    # a client-side apply keeps.
    control_plane.kubectl("apply", "--server-side", "-f",
                          str(repo_root() / "deploy" / "keyrotor.yaml"))
    token = control_plane.kubectl("create", "token", "keyrotor", "-n", "keyrotor-system",
                                  "--duration=1h").stdout.strip()
    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    config["users"] = [{"name": "sa", "user": {"token": token}}]
    config["contexts"] = [{"name": "sa", "context": {"cluster": "keyrotor-envtest",
                                                      "user": "sa"}}]
    config["current-context"] = "sa"
    kubeconfig = tmp_path / "sa.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))

    sa = "system:serviceaccount:keyrotor-system:keyrotor"
    def can(*args: str) -> str:
        return control_plane.kubectl("auth", "can-i", *args, f"--as={sa}", "-n", namespace,
                                     check=False).stdout.strip()
    assert can("create", "secrets") == "yes"
    assert can("patch", "rotatingsecrets.keyrotor.io/status") == "yes"
    assert can("get", "pods") == "no" and can("list", "secrets") == "no"
    assert can("delete", "rotatingsecrets.keyrotor.io") == "no"
    assert can("patch", "statefulsets.apps") == "yes" and can("delete", "deployments.apps") == "no"

    # A StatefulSet to restart: its status is written here, as no controller runs.
    labels = {"app": "db"}
    kapi.apps.create_namespaced_stateful_set(namespace, {
        "metadata": {"name": "db"}, "spec": {
            "replicas": 1, "serviceName": "db", "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                {"name": "db", "image": "registry.invalid/db:1"}]}}}})

    operator = OperatorProcess(kubeconfig=kubeconfig, namespace=namespace,
                               log_path=tmp_path / "operator.log",
                               extra_args=["--restart-debounce", "0.5"])
    operator.start()
    try:
        control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=rotating_secret(
            "sa-key", rotation={"minOverlap": "1s"}, deletionPolicy="Delete",
            generator={"symmetric": {"algorithm": "HMAC-SHA256"}},
            verification={"interval": "300ms", "successesRequired": 1},
            rolloutRestartTargets=[{"kind": "StatefulSet", "name": "db"}]))
        wait_status(kapi, namespace, "sa-key", lambda s: s.get("currentVersion") == 1)
        kapi.annotate_rotating_secret(namespace, "sa-key", "keyrotor.io/rotate", "sa")
        restarted = wait_for(lambda: (lambda b: b if b and b["metadata"]["generation"] == 2
                                      else None)(kapi.get_workload(namespace, "StatefulSet", "db")),
                             timeout=30, what="the StatefulSet's restart")
        annotations = restarted["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {"restarted.keyrotor.io/sa-key": "2"}
        kapi.apps.patch_namespaced_stateful_set_status("db", namespace, {"status": {
            "observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
            "availableReplicas": 1}})
        status = wait_status(kapi, namespace, "sa-key", lambda s: s.get("rotationCount") == 1)
        assert status["currentVersion"] == 2
        control_plane.kubectl("delete", "rsec", "sa-key", "-n", namespace, "--timeout=60s")
        assert kapi.get_secret(namespace, "sa-key") is None
    finally:
        operator.stop()
        log = operator.log_text()
        print(log[-10000:])
    assert "Forbidden" not in log and "403" not in log
