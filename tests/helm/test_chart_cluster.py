"""The chart against a real kube-apiserver: dry runs, Pod Security, install, upgrade, uninstall.

No controllers run on the local control plane, so no pod ever starts: the operator runs here as
a subprocess with the arguments of the Deployment helm installed and a token of the chart's
ServiceAccount (TokenRequest), which is what its pod would run with. The tests of this module
share one cluster-wide release and run in file order (install, rotate, upgrade, uninstall); the
namespaced release comes last, after the cluster-wide one has left the CRD behind.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keyrotor.kube import KubeApi
from keyrotor.testing.controlplane import ControlPlane
from keyrotor.testing.toolchain import repo_root
from keyrotor.testing.waiting import wait_for
from tests.helm.conftest import (
    CHART,
    ChartOperator,
    Helm,
    create_namespace,
    installed_deployment,
    wait_established,
)
from tests.helm.test_chart_files import EVERYTHING, NAMESPACED, SHARDED
from tests.operator.conftest import rotating_secret
from tests.operator.helpers import token_kubeconfig, wait_status

RELEASE, RELEASE_NS = "keyrotor", "keyrotor-system"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}


def dry_run(plane: ControlPlane, manifest: str) -> str:
    result = plane.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-",
                           input=manifest, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_rendered_chart_is_accepted_by_the_apiserver(chart_plane: ControlPlane,
                                                     cluster_helm: Helm) -> None:
    for namespace in (RELEASE_NS, "team-a", "team-b"):
        create_namespace(chart_plane, namespace, **RESTRICTED)
    for mode in ((), NAMESPACED):
        manifest = cluster_helm("template", RELEASE, str(CHART), "--namespace", RELEASE_NS,
                                *mode, *EVERYTHING).stdout
        out = dry_run(chart_plane, manifest)
        print(out)
        lines = out.splitlines()
        assert all(line.endswith("serverside-applied (server dry run)") for line in lines)
        applied = {line.split("/")[0].split(".")[0] for line in lines}
        assert {"customresourcedefinition", "deployment", "servicemonitor", "prometheusrule",
                "networkpolicy", "poddisruptionbudget", "configmap", "service",
                "serviceaccount", "role", "rolebinding"} <= applied
        assert ("clusterrole" in applied) == (not mode)


def test_sharded_render_is_accepted_by_the_apiserver(chart_plane: ControlPlane,
                                                     cluster_helm: Helm) -> None:
    create_namespace(chart_plane, RELEASE_NS, **RESTRICTED)
    manifest = cluster_helm("template", RELEASE, str(CHART), "--namespace", RELEASE_NS,
                            *SHARDED, *EVERYTHING).stdout
    out = dry_run(chart_plane, manifest)
    print(out)
    lines = out.splitlines()
    assert all(line.endswith("serverside-applied (server dry run)") for line in lines)
    names = {line.split()[0] for line in lines}
    for kind in ("deployment.apps", "poddisruptionbudget.policy"):
        assert {n for n in names if n.startswith(kind + "/")} == {
            f"{kind}/keyrotor", f"{kind}/keyrotor-shard-a", f"{kind}/keyrotor-shard-b"}
    assert {n for n in names if n.startswith("service/")} == {
        "service/keyrotor-metrics", "service/keyrotor-shard-a-metrics",
        "service/keyrotor-shard-b-metrics", "service/keyrotor-reports"}
    assert {n for n in names if n.split("/")[0].split(".")[0] in ("servicemonitor",
                                                                   "networkpolicy")} == {
        "servicemonitor.monitoring.coreos.com/keyrotor",
        "networkpolicy.networking.k8s.io/keyrotor"}


def pod_from(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    template = copy.deepcopy(deployment["spec"]["template"])
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": template["metadata"]["labels"]},
            "spec": template["spec"]}


def test_operator_pod_passes_pod_security_restricted(chart_plane: ControlPlane,
                                                     helm: Helm) -> None:
    namespace = create_namespace(chart_plane, "psa-restricted", **RESTRICTED)
    deployment = next(obj for obj in helm.template() if obj["kind"] == "Deployment")
    pod = pod_from(deployment, "keyrotor-0")

    # The counter-check first: the namespace does enforce (and its labels have reached the
    # admission plugin), so the acceptance below means something.
    bad = copy.deepcopy(pod)
    bad["metadata"]["name"] = "keyrotor-bad"
    container = bad["spec"]["containers"][0]
    container["securityContext"] = {"allowPrivilegeEscalation": True}
    del bad["spec"]["securityContext"]["runAsNonRoot"]

    def rejected() -> str | None:
        result = chart_plane.kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-",
                                     input=json.dumps(bad), check=False)
        return result.stderr if result.returncode != 0 else None

    message = wait_for(rejected, timeout=15, what="the restricted profile rejecting a pod")
    assert 'violates PodSecurity "restricted:latest"' in message, message
    assert "allowPrivilegeEscalation" in message and "runAsNonRoot" in message

    result = chart_plane.kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-",
                                 input=json.dumps(pod), check=False)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr


# ---- one cluster-wide release: install, rotate, upgrade, uninstall ---------------------------

INSTALL_OUTPUT: dict[str, str] = {}


@pytest.fixture(scope="module")
def release(chart_plane: ControlPlane, cluster_helm: Helm) -> Iterator[str]:
    create_namespace(chart_plane, RELEASE_NS, **RESTRICTED)
    started = time.monotonic()
    out = cluster_helm("install", RELEASE, str(CHART), "--namespace", RELEASE_NS,
                       *EVERYTHING).stdout
    print(f"helm install took {time.monotonic() - started:.1f}s\n{out}")
    INSTALL_OUTPUT[RELEASE] = out
    yield RELEASE
    cluster_helm("uninstall", RELEASE, "--namespace", RELEASE_NS, check=False)


def test_install(chart_plane: ControlPlane, cluster_helm: Helm, release: str) -> None:
    # NOTES.txt tells what to do next; its example is applied as printed, and the operator
    # (next test) issues its first version.
    notes = INSTALL_OUTPUT[release]
    assert "kubectl get rsec -A" in notes
    example = notes[notes.index("<<'YAML'\n") + len("<<'YAML'\n"):notes.index("\nYAML\n")]
    wait_established(chart_plane, "rotatingsecrets.keyrotor.io",
                     "rotationapprovals.keyrotor.io")
    chart_plane.kubectl("apply", "-n", "default", "-f", "-", input=example)
    status = json.loads(cluster_helm("status", release, "-n", RELEASE_NS, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed" and status["version"] == 1
    for kind, name in [("deployment", "keyrotor"), ("serviceaccount", "keyrotor"),
                       ("service", "keyrotor-metrics"), ("service", "keyrotor-reports"),
                       ("poddisruptionbudget", "keyrotor"),
                       ("servicemonitor", "keyrotor"), ("prometheusrule", "keyrotor"),
                       ("configmap", "keyrotor-dashboard"), ("networkpolicy", "keyrotor"),
                       ("role", "keyrotor-leader-election")]:
        chart_plane.kubectl("get", kind, name, "-n", RELEASE_NS)
    chart_plane.kubectl("get", "clusterrole", "keyrotor")
    chart_plane.kubectl("get", "clusterrolebinding", "keyrotor")
    crd = json.loads(chart_plane.kubectl("get", "crd", "rotatingsecrets.keyrotor.io",
                                         "-o", "json").stdout)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release
    dashboards = chart_plane.kubectl("get", "configmap", "-A", "-l", "grafana_dashboard=1",
                                     "-o", "name").stdout.split()
    assert dashboards == ["configmap/keyrotor-dashboard"]


def rotate_once(kapi: KubeApi, plane: ControlPlane, namespace: str, name: str) -> None:
    """A RotatingSecret's first version, then one rotation on demand."""
    plane.kubectl("apply", "-n", namespace, "-f", "-", input=rotating_secret(
        name, rotation={"minOverlap": "1s"},
        generator={"symmetric": {"algorithm": "HMAC-SHA256"}},
        verification={"interval": "300ms", "successesRequired": 1}))
    wait_status(kapi, namespace, name, lambda s: s.get("currentVersion") == 1,
                what="the first version")
    kapi.annotate_rotating_secret(namespace, name, "keyrotor.io/rotate", "helm-test")
    status = wait_status(kapi, namespace, name, lambda s: s.get("rotationCount") == 1,
                         what="one rotation")
    assert status["currentVersion"] == 2
    secret = kapi.get_secret(namespace, name)
    assert secret is not None and secret["data"].get("current")


def test_operator_rotates_as_the_chart_service_account(
        chart_plane: ControlPlane, chart_kapi: KubeApi, release: str, tmp_path: Path) -> None:
    apps = create_namespace(chart_plane, "apps")
    deployment = installed_deployment(chart_plane, RELEASE_NS, "keyrotor")
    kubeconfig = token_kubeconfig(chart_plane,
                                  deployment["spec"]["template"]["spec"]["serviceAccountName"],
                                  RELEASE_NS, tmp_path / "sa.kubeconfig")
    operator = ChartOperator(deployment=deployment, kubeconfig=kubeconfig,
                             log_path=tmp_path / "operator.log")
    print("keyrotor", " ".join(operator.argv))
    operator.start()
    try:
        operator.wait_ready()
        rotate_once(chart_kapi, chart_plane, apps, "payments-key")
        wait_status(chart_kapi, "default", "demo-api-key",
                    lambda s: s.get("currentVersion") == 1, what="the NOTES example's version")
        lease = json.loads(chart_plane.kubectl("get", "lease", "keyrotor", "-n", RELEASE_NS,
                                               "-o", "json").stdout)
        assert lease["spec"]["holderIdentity"] == operator.pod_name
        assert operator.health("/healthz") == 200
    finally:
        operator.stop()
        log = operator.log_text()
        print(log[-10000:])
    assert "Forbidden" not in log and " 403" not in log
    assert "every permission the operator needs is granted" in log


def test_upgrade_changes_a_value(chart_plane: ControlPlane, cluster_helm: Helm,
                                 release: str) -> None:
    cluster_helm("upgrade", release, str(CHART), "--namespace", RELEASE_NS, "--reuse-values",
                 "--set", "replicaCount=3", "--set", "logFormat=text",
                 "--set", "podAnnotations.upgraded=yes")
    status = json.loads(cluster_helm("status", release, "-n", RELEASE_NS, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed" and status["version"] == 2
    deployment = installed_deployment(chart_plane, RELEASE_NS, "keyrotor")
    assert deployment["spec"]["replicas"] == 3
    template = deployment["spec"]["template"]
    args = template["spec"]["containers"][0]["args"]
    assert args[args.index("--log-format") + 1] == "text"
    assert template["metadata"]["annotations"] == {"upgraded": "yes"}
    # --reuse-values kept the monitoring objects of the install.
    chart_plane.kubectl("get", "servicemonitor", "keyrotor", "-n", RELEASE_NS)
    history = json.loads(cluster_helm("history", release, "-n", RELEASE_NS,
                                      "-o", "json").stdout)
    assert [h["status"] for h in history] == ["superseded", "deployed"]


def test_upgrade_adds_and_removes_shards(chart_plane: ControlPlane, cluster_helm: Helm,
                                        release: str) -> None:
    """Sharding switched on and off on a running release: the main Deployment's selector stays
    as it was (Kubernetes refuses to change it), the shards come and go."""
    out = cluster_helm("upgrade", release, str(CHART), "--namespace", RELEASE_NS,
                       "--reuse-values", *SHARDED).stdout
    print(out)
    assert "keyrotor-shard-a: RotatingSecrets labelled keyrotor.io/shard=a" in out  # NOTES
    assert "kubectl -n NAMESPACE label rsec NAME keyrotor.io/shard=a --overwrite" in out

    def deployments() -> dict[str, list[str]]:
        listed = json.loads(chart_plane.kubectl(
            "get", "deployments", "-n", RELEASE_NS, "-l", f"app.kubernetes.io/instance={release}",
            "-o", "json").stdout)
        return {d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["args"]
                for d in listed["items"]}

    sharded = deployments()
    assert sorted(sharded) == ["keyrotor", "keyrotor-shard-a", "keyrotor-shard-b"]
    main = sharded["keyrotor"]
    assert main[main.index("--other-shards") + 1] == "a,b"
    shard = sharded["keyrotor-shard-b"]
    assert shard[shard.index("--shard") + 1] == "b"
    assert shard[shard.index("--leader-election-id") + 1] == "keyrotor-shard-b"
    chart_plane.kubectl("get", "poddisruptionbudget", "keyrotor-shard-a", "-n", RELEASE_NS)
    chart_plane.kubectl("get", "service", "keyrotor-shard-a-metrics", "-n", RELEASE_NS)
    # The shards share the release's ServiceAccount; its Role covers their Leases too.
    account = f"system:serviceaccount:{RELEASE_NS}:keyrotor"
    for verb in ("get", "create", "update"):
        assert chart_plane.kubectl("auth", "can-i", verb, "leases/keyrotor-shard-a", "-n",
                                   RELEASE_NS, f"--as={account}",
                                   check=False).stdout.strip() == "yes", verb

    cluster_helm("upgrade", release, str(CHART), "--namespace", RELEASE_NS, "--reuse-values",
                 "--set-json", "sharding.shards=[]")  # --set ...={} would be [""]
    unsharded = deployments()
    assert list(unsharded) == ["keyrotor"] and "--other-shards" not in unsharded["keyrotor"]


def test_uninstall_keeps_the_crd_and_rotating_secrets(
        chart_plane: ControlPlane, cluster_helm: Helm, chart_kapi: KubeApi, release: str) -> None:
    keep = create_namespace(chart_plane, "kept")
    chart_plane.kubectl("apply", "-n", keep, "-f", "-", input=rotating_secret(
        "survivor", generator={"random": {"length": 32}}))
    out = cluster_helm("uninstall", release, "--namespace", RELEASE_NS).stdout
    print(out)
    assert "rotatingsecrets.keyrotor.io" in out  # helm names what it kept
    gone = chart_plane.kubectl("get", "deployment", "keyrotor", "-n", RELEASE_NS, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    assert chart_plane.kubectl("get", "clusterrole", "keyrotor", check=False).returncode != 0
    chart_plane.kubectl("get", "crd", "rotatingsecrets.keyrotor.io")
    assert chart_kapi.get_rotating_secret(keep, "survivor") is not None
    assert chart_kapi.get_rotating_secret("apps", "payments-key") is not None
    assert chart_kapi.get_secret("apps", "payments-key") is not None


# ---- a namespaced release ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def team_release(chart_plane: ControlPlane, cluster_helm: Helm) -> Iterator[str]:
    """Release ``team`` watching only ``team-a``; the CRD is already there (crds.enabled off,
    as a second release in a cluster sets it)."""
    if chart_plane.kubectl("get", "crd", "rotatingsecrets.keyrotor.io",
                           check=False).returncode != 0:
        chart_plane.kubectl("apply", "--server-side", "-f", str(repo_root() / "crds"))
    wait_established(chart_plane, "rotatingsecrets.keyrotor.io",
                     "rotationapprovals.keyrotor.io")
    for namespace in ("keyrotor-team", "team-a", "team-b"):
        create_namespace(chart_plane, namespace, **RESTRICTED)
    cluster_helm("install", "team", str(CHART), "--namespace", "keyrotor-team",
                 "--set", "watchNamespaces={team-a}", "--set", "crds.enabled=false")
    yield "team"
    cluster_helm("uninstall", "team", "--namespace", "keyrotor-team", check=False)


def test_namespaced_release_rotates_in_its_namespace_only(
        chart_plane: ControlPlane, chart_kapi: KubeApi, team_release: str,
        tmp_path: Path) -> None:
    deployment = installed_deployment(chart_plane, "keyrotor-team", "team-keyrotor")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert account == "team-keyrotor"
    sa = f"system:serviceaccount:keyrotor-team:{account}"

    def can(verb: str, resource: str, namespace: str) -> str:
        return chart_plane.kubectl("auth", "can-i", verb, resource, "-n", namespace,
                                   f"--as={sa}", check=False).stdout.strip()

    assert can("create", "secrets", "team-a") == "yes"
    assert can("get", "secrets", "team-b") == "no"
    assert can("list", "rotatingsecrets.keyrotor.io", "team-b") == "no"
    assert can("list", "namespaces", "") == "no"  # nothing cluster-wide

    kubeconfig = token_kubeconfig(chart_plane, account, "keyrotor-team",
                                  tmp_path / "sa.kubeconfig")
    chart_plane.kubectl("create", "secret", "generic", "other-team", "-n", "team-b",
                        "--from-literal=key=value")
    assert chart_plane.binaries is not None
    denied = subprocess.run([str(chart_plane.binaries.kubectl), "--kubeconfig", str(kubeconfig),
                             "get", "secret", "other-team", "-n", "team-b"],
                            capture_output=True, text=True, timeout=60)
    print(denied.stderr)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr, denied.stderr
    assert 'cannot get resource "secrets"' in denied.stderr

    operator = ChartOperator(deployment=deployment, kubeconfig=kubeconfig,
                             log_path=tmp_path / "operator.log", pod_name="team-keyrotor-0")
    assert operator.argv[operator.argv.index("--namespace") + 1] == "team-a"
    operator.start()
    try:
        operator.wait_ready()
        rotate_once(chart_kapi, chart_plane, "team-a", "team-key")
    finally:
        operator.stop()
        log = operator.log_text()
        print(log[-10000:])
    assert "every permission the operator needs is granted" in log
    # Nothing cluster-wide was even tried (kopf's namespace and CRD scanning is off with -n).
    assert "Forbidden" not in log and " 403" not in log, log

    # Started also for team-b, which its Role does not cover: it says so, naming what.
    deployment["spec"]["template"]["spec"]["containers"][0]["args"] += ["--namespace",
                                                                          "team-b"]
    outsider = ChartOperator(deployment=deployment, kubeconfig=kubeconfig,
                             log_path=tmp_path / "outsider.log", pod_name="team-keyrotor-1")
    outsider.start()
    try:
        def complaint() -> list[str]:
            return [line for line in outsider.log_text().splitlines()
                    if "team-b" in line and "secrets" in line and "may not" in line]
        lines = wait_for(complaint, timeout=30, what="the permission complaint about team-b")
    finally:
        outsider.stop()
        print(outsider.log_text()[-5000:])
    print("\n".join(lines))
    assert any('"get' in line or " get " in line for line in lines)
    assert not any("team-a" in line for line in outsider.log_text().splitlines()
                   if "may not" in line)
