"""The operator works with exactly the RBAC in deploy/, as its ServiceAccount, and no more;
with less, it names what it lacks."""

from __future__ import annotations

import yaml

from keyrotor.kube import KubeApi
from keyrotor.testing.controlplane import ControlPlane
from keyrotor.testing.toolchain import repo_root
from keyrotor.testing.waiting import wait_for
from tests.operator.conftest import OperatorProcess, rotating_secret
from tests.operator.helpers import condition, token_kubeconfig, wait_reasons, wait_status


def test_operator_runs_as_its_service_account(control_plane: ControlPlane, crds: None,
                                              kapi: KubeApi, namespace: str, tmp_path) -> None:
    # Server-side, as its header says: the dashboard ConfigMap may outgrow the annotation that
    # a client-side apply keeps.
    control_plane.kubectl("apply", "--server-side", "-f",
                          str(repo_root() / "deploy" / "keyrotor.yaml"))
    kubeconfig = token_kubeconfig(control_plane, "keyrotor", "keyrotor-system",
                                  tmp_path / "sa.kubeconfig")

    sa = "system:serviceaccount:keyrotor-system:keyrotor"
    def can(*args: str) -> str:
        return control_plane.kubectl("auth", "can-i", *args, f"--as={sa}", "-n", namespace,
                                     check=False).stdout.strip()
    assert can("create", "secrets") == "yes"
    assert can("patch", "rotatingsecrets.keyrotor.io/status") == "yes"
    assert can("get", "pods") == "no"
    # list/watch on Secrets feed the metadata-only drift watch (README: the trade-off).
    assert can("list", "secrets") == "yes" and can("watch", "secrets") == "yes"
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
        wait_for(lambda: kapi.get_secret(namespace, "sa-key") is None, what="Secret deleted")
    finally:
        operator.stop()
        log = operator.log_text()
        print(log[-10000:])
    # Audit lines (JSON on stdout) carry hashes, where "403" may occur by chance.
    logged = "\n".join(line for line in log.splitlines() if "keyrotor.io/audit" not in line)
    assert "Forbidden" not in logged and " 403" not in logged and "403 " not in logged


def test_missing_verb_is_named_and_nothing_is_lost(control_plane: ControlPlane, crds: None,
                                                   kapi: KubeApi, namespace: str,
                                                   tmp_path) -> None:
    """RBAC without ``update`` on Secrets: the first version is created, the rotation's first
    write is refused; the status and a Warning event name the verb and the resource, the
    current key stays, and granting the verb lets the rotation finish."""
    rules = [
        {"apiGroups": ["keyrotor.io"], "resources": ["rotatingsecrets"],
         "verbs": ["get", "list", "watch", "patch", "update"]},
        {"apiGroups": ["keyrotor.io"], "resources": ["rotatingsecrets/status"],
         "verbs": ["get", "patch", "update"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "patch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    ]
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "short"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "short"}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "short"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "short"},
         "subjects": [{"kind": "ServiceAccount", "name": "short", "namespace": namespace}]},
    ]))
    kubeconfig = token_kubeconfig(control_plane, "short", namespace, tmp_path / "kubeconfig")
    operator = OperatorProcess(kubeconfig=kubeconfig, namespace=namespace,
                               log_path=tmp_path / "operator.log")
    operator.start()
    try:
        control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=rotating_secret(
            "short", rotation={"minOverlap": "1s"}, generator={"random": {"length": 24}},
            verification={"interval": "200ms", "successesRequired": 1}))
        wait_status(kapi, namespace, "short", lambda s: s.get("currentVersion") == 1)
        first = kapi.get_secret(namespace, "short")
        assert first is not None
        kapi.annotate_rotating_secret(namespace, "short", "keyrotor.io/rotate", "now")
        status = wait_status(kapi, namespace, "short", lambda s: condition(
            s, "Degraded").get("reason") == "PermissionDenied", what="Degraded")
        message = condition(status, "Degraded")["message"]
        assert "may not update secrets in namespace " + namespace in message, message
        reasons = wait_reasons(kapi, namespace, "short", lambda r: "PermissionDenied" in r)
        assert reasons.count("PermissionDenied") == 1
        assert operator.metric("keyrotor_permission_missing", verb="update",
                               resource="secrets", namespace=namespace) == 1
        # Nothing lost: the Secret still holds version 1, unchanged.
        assert kapi.get_secret(namespace, "short")["data"] == first["data"]  # type: ignore[index]
        # The startup check named it before anything failed; a namespaced operator asks for
        # nothing cluster-wide (kopf lists no namespaces and no CRDs).
        log = operator.log_text()
        assert "may not update secrets in namespace " + namespace in log
        assert "cluster scope" not in log and "cluster-wide" not in log

        rules[2]["verbs"].append("update")
        control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": {"name": "short"}, "rules": rules}))
        status = wait_status(kapi, namespace, "short", lambda s: s.get("rotationCount") == 1,
                             timeout=90, what="the rotation once the verb is granted")
        assert status["currentVersion"] == 2
        assert condition(status, "Degraded")["status"] == "False"
    finally:
        operator.stop()
        print(operator.log_text()[-5000:])
