"""The chart as files: helm's version, lint, the schema, what renders, and the derived files.

No cluster here (the next module installs the chart); helm itself is real, built from its Go
module.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

import keyrotor
from keyrotor.permissions import NEEDS
from keyrotor.testing import chartsync
from keyrotor.testing.toolchain import repo_root
from tests.helm.conftest import CHART, Helm

NAMESPACED = ("--set", "watchNamespaces={team-a,team-b}")
EVERYTHING = ("--set", "monitoring.serviceMonitor.enabled=true",
              "--set", "monitoring.prometheusRule.enabled=true",
              "--set", "networkPolicy.enabled=true")
SHARDED = ("--set", "sharding.shards={a,b}")


def kinds(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        found.setdefault(obj["kind"], []).append(obj)
    return found


def test_helm_reports_its_release(helm: Helm) -> None:
    go_mod = (repo_root() / "tests" / "helm" / "go.mod").read_text()
    pinned = next(line.split()[-1] for line in go_mod.splitlines()
                  if line.split()[:2] == ["require", "helm.sh/helm/v4"])
    out = helm("version").stdout
    print(out)
    assert f'Version:"{pinned}"' in out and pinned.startswith("v4.3.")


def test_chart_metadata(helm: Helm) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == keyrotor.__version__
    deployment = kinds(helm.template())["Deployment"][0]
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"keyrotor:{keyrotor.__version__}"


@pytest.mark.parametrize("mode", [(), NAMESPACED, SHARDED, (*NAMESPACED, *SHARDED)],
                         ids=["cluster-wide", "namespaced", "sharded", "namespaced-sharded"])
def test_lint_strict_is_clean(helm: Helm, mode: tuple[str, ...]) -> None:
    result = helm("lint", "--strict", str(CHART), *mode, *EVERYTHING)
    print(result.stdout, result.stderr)
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


def test_derived_files_are_current(helm: Helm) -> None:
    """scripts/chart-sync's outputs: the CRD template, the values table, deploy/keyrotor.yaml."""
    root = repo_root()
    for path, text in chartsync.expected_sources(root).items():
        assert (root / path).read_text() == text, f"{path} is stale: run scripts/chart-sync"
    assert (root / chartsync.DEPLOY).read_text() == chartsync.render_deploy(helm.binary, root), \
        f"{chartsync.DEPLOY} is stale: run scripts/chart-sync"


def test_values_table_documents_every_leaf_the_chart_reads() -> None:
    documented = {v.key for v in chartsync.documented_values(
        (CHART / "values.yaml").read_text())}
    assert {"replicaCount", "crds.enabled", "crds.keep", "watchNamespaces", "logFormat",
            "monitoring.serviceMonitor.enabled", "monitoring.prometheusRule.enabled",
            "monitoring.dashboards.enabled", "networkPolicy.enabled"} <= documented
    readme = (CHART / "README.md").read_text()
    assert "| `crds.keep` | bool | `true` |" in readme


def test_crd_is_the_one_in_crds(helm: Helm) -> None:
    source = yaml.safe_load((repo_root() / chartsync.CRD_SOURCE).read_text())
    crd = kinds(helm.template())["CustomResourceDefinition"][0]
    assert crd["spec"] == source["spec"]
    assert crd["metadata"]["name"] == source["metadata"]["name"]
    assert source["metadata"]["labels"].items() <= crd["metadata"]["labels"].items()
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}

    not_kept = kinds(helm.template("--set", "crds.keep=false"))["CustomResourceDefinition"][0]
    assert "annotations" not in not_kept["metadata"]
    assert not_kept["spec"] == source["spec"]
    assert "CustomResourceDefinition" not in kinds(helm.template("--set", "crds.enabled=false"))


def test_rbac_cluster_wide(helm: Helm) -> None:
    objects = kinds(helm.template())
    (cluster_role,) = objects["ClusterRole"]
    (binding,) = objects["ClusterRoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "keyrotor",
                                    "namespace": "keyrotor-system"}]
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"])
             for r in cluster_role["rules"]}
    # Exactly what the operator's own permission check asks for: one list of needs.
    for group, resource in (("keyrotor.io", "rotatingsecrets"), ("", "secrets"),
                            ("", "events"), ("keyrotor.io", "rotationapprovals")):
        needed = {n.verb for n in NEEDS if (n.group, n.resource, n.subresource) ==
                  (group, resource, "")}
        assert rules[((group,), (resource,))] == needed, resource
    assert rules[(("keyrotor.io",), ("rotatingsecrets/status",))] == {"patch"}
    assert "*" not in {verb for verbs in rules.values() for verb in verbs}
    roles = {r["metadata"]["name"]: r for r in objects["Role"]}
    assert set(roles) == {"keyrotor-leader-election", "keyrotor-approvers", "keyrotor-audit"}
    # The audit chain head's ConfigMap, in the release namespace only.
    (audit_rule,) = roles["keyrotor-audit"]["rules"]
    assert roles["keyrotor-audit"]["metadata"]["namespace"] == "keyrotor-system"
    assert audit_rule["resources"] == ["configmaps"] and {
        n.verb for n in NEEDS if n.resource == "configmaps" and n.own} <= set(audit_rule["verbs"])
    lease_role = roles["keyrotor-leader-election"]
    assert lease_role["metadata"]["namespace"] == "keyrotor-system"
    # The approvers' Secret (TOTP seeds) and nothing else in the release namespace.
    assert roles["keyrotor-approvers"]["metadata"]["namespace"] == "keyrotor-system"
    assert roles["keyrotor-approvers"]["rules"] == [{
        "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["keyrotor-approvers"],
        "verbs": ["get", "update", "patch"]}]
    assert lease_role["rules"] == [{"apiGroups": ["coordination.k8s.io"],
                                    "resources": ["leases"],
                                    "verbs": ["get", "create", "update"]}]
    args = objects["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace" not in args and "-n" not in args


def test_rbac_namespaced(helm: Helm) -> None:
    objects = kinds(helm.template(*NAMESPACED))
    assert "ClusterRole" not in objects and "ClusterRoleBinding" not in objects
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in objects["Role"]}
    assert roles == {("team-a", "keyrotor"), ("team-b", "keyrotor"),
                     ("keyrotor-system", "keyrotor-leader-election"),
                     ("keyrotor-system", "keyrotor-approvers"),
                     ("keyrotor-system", "keyrotor-audit")}
    bindings = {(b["metadata"]["namespace"], b["roleRef"]["name"])
                for b in objects["RoleBinding"]}
    assert bindings == roles
    args = objects["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--namespace") + 1] == "team-a"
    assert args[len(args) - 1 - args[::-1].index("--namespace") + 1] == "team-b"


def test_audit_file_on_its_volume(helm: Helm) -> None:
    def pod(*args: str) -> dict[str, Any]:
        spec: dict[str, Any] = kinds(helm.template(*args))["Deployment"][0]["spec"]
        return spec["template"]["spec"]  # type: ignore[no-any-return]

    default = pod()
    (container,) = default["containers"]
    assert flag(container["args"], "--audit-log") == "/var/log/keyrotor/audit.log"
    assert {"name": "audit", "mountPath": "/var/log/keyrotor"} in container["volumeMounts"]
    assert {"name": "audit", "emptyDir": {}} in default["volumes"]
    claimed = pod("--set", "audit.volume.persistentVolumeClaim.claimName=audit",
                  "--set", "audit.file.path=/audit/trail.jsonl")
    assert flag(claimed["containers"][0]["args"], "--audit-log") == "/audit/trail.jsonl"
    assert {"name": "audit", "persistentVolumeClaim": {"claimName": "audit"}} in \
        claimed["volumes"]
    off = pod("--set", "audit.file.enabled=false")
    assert "--audit-log" not in off["containers"][0]["args"]
    assert all(v["name"] != "audit" for v in off["volumes"])


def test_deployment_defaults(helm: Helm) -> None:
    objects = kinds(helm.template())
    deployment = objects["Deployment"][0]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 2
    args = container["args"]
    assert args[:3] == ["run", "--log-format", "json"]
    assert args[args.index("--leader-election-namespace") + 1] == "$(POD_NAMESPACE)"
    assert "--leader-elect" in args
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace",
                   "POD_IP": "status.podIP"}  # the leader publishes POD_IP for report hand-on
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert objects["PodDisruptionBudget"][0]["spec"]["minAvailable"] == 1
    assert "ServiceMonitor" not in objects and "PrometheusRule" not in objects
    assert "NetworkPolicy" not in objects

    one = kinds(helm.template("--set", "replicaCount=1"))
    assert "PodDisruptionBudget" not in one

    tuned = kinds(helm.template(
        "--set", "priorityClassName=system-cluster-critical",
        "--set", "nodeSelector.disk=ssd", "--set", "podAnnotations.team=payments",
        "--set", "extraArgs={--verbose}", "--set", "logFormat=text",
        "--set", "image.tag=dev", "--set", "image.pullPolicy=Always"))["Deployment"][0]
    template = tuned["spec"]["template"]
    container = template["spec"]["containers"][0]
    assert template["spec"]["priorityClassName"] == "system-cluster-critical"
    assert template["spec"]["nodeSelector"] == {"disk": "ssd"}
    assert template["metadata"]["annotations"] == {"team": "payments"}
    assert container["args"][-1] == "--verbose" and container["args"][2] == "text"
    assert container["image"] == "keyrotor:dev" and container["imagePullPolicy"] == "Always"


def test_monitoring_objects_carry_the_shared_files(helm: Helm) -> None:
    objects = kinds(helm.template(*EVERYTHING))
    rule = objects["PrometheusRule"][0]
    alerts = yaml.safe_load((CHART / "files" / "keyrotor-alerts.yaml").read_text())
    assert rule["spec"] == alerts and rule["spec"]["groups"]
    monitor = objects["ServiceMonitor"][0]
    service = next(s for s in objects["Service"] if s["metadata"]["name"] == "keyrotor-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    (dashboard,) = objects["ConfigMap"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["keyrotor-dashboard.json"]) == json.loads(
        (CHART / "files" / "keyrotor-dashboard.json").read_text())
    assert "ConfigMap" not in kinds(helm.template("--set", "monitoring.dashboards.enabled=false"))


@pytest.mark.parametrize(("values", "message"), [
    ("replicaCount: two", "at '/replicaCount': got string, want integer"),
    ("logFormat: xml", "at '/logFormat': value must be one of 'json', 'text'"),
    ("replicas: 2", "additional properties 'replicas' not allowed"),
    ("crds: {keep: 'yes'}", "at '/crds/keep': got string, want boolean"),
    ("watchNamespaces: [Payments]", "at '/watchNamespaces/0'"),
    ("monitoring: {serviceMonitor: {enabled: true, interval: soon}}",
     "at '/monitoring/serviceMonitor/interval'"),
    ("sharding: {shards: [Payments_EU]}",
     "at '/sharding/shards/0': 'Payments_EU' does not match pattern"),
    ("sharding: {shards: [a, a]}", "at '/sharding/shards': items at 0 and 1 are equal"),
    ("sharding: {shards: a}", "at '/sharding/shards': got string, want array"),
])
def test_schema_rejects_a_wrong_value_by_name(helm: Helm, tmp_path, values: str,
                                              message: str) -> None:
    (tmp_path / "values.yaml").write_text(values + "\n")
    for command in ("template", "lint"):
        args = [command, *(["keyrotor"] if command == "template" else []), str(CHART),
                "-f", str(tmp_path / "values.yaml")]
        result = helm(*args, check=False)
        assert result.returncode != 0, f"helm {command} accepted {values!r}"
        assert message in result.stdout + result.stderr, result.stdout + result.stderr


# ---- sharding -------------------------------------------------------------------------------

def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels, matchExpressions with In) selects ``labels``."""
    if not selector.get("matchLabels") and not selector.get("matchExpressions"):
        selector = {"matchLabels": selector}  # a Service's selector is a plain map
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or ():
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def args_of(deployment: dict[str, Any]) -> list[str]:
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def test_sharded_release_has_a_deployment_per_shard(helm: Helm) -> None:
    objects = kinds(helm.template(*SHARDED, *EVERYTHING))
    deployments = {d["metadata"]["name"]: d for d in objects["Deployment"]}
    assert list(deployments) == ["keyrotor", "keyrotor-shard-a", "keyrotor-shard-b"]
    pods = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in deployments.items()}
    # Each Deployment selects its own pods and none of the others': no overlap, in either
    # direction (the main selector is the one of unsharded releases: immutable, kept as is).
    for name, deployment in deployments.items():
        for other, labels in pods.items():
            assert selects(deployment["spec"]["selector"], labels) == (name == other), \
                (name, other)
    assert deployments["keyrotor"]["spec"]["selector"] == \
        kinds(helm.template())["Deployment"][0]["spec"]["selector"]

    main = args_of(deployments["keyrotor"])
    assert flag(main, "--other-shards") == "a,b" and "--shard" not in main
    assert flag(main, "--leader-election-id") == "keyrotor"
    for shard in ("a", "b"):
        deployment = deployments[f"keyrotor-shard-{shard}"]
        args = args_of(deployment)
        assert flag(args, "--shard") == shard and "--other-shards" not in args
        assert flag(args, "--leader-election-id") == f"keyrotor-shard-{shard}"
        assert "--leader-elect" in args
        assert deployment["metadata"]["labels"]["app.kubernetes.io/component"] == \
            f"shard-{shard}"
        assert deployment["spec"]["replicas"] == 2
        # Its own audit file: two chains never share one.
        assert flag(args, "--audit-log") == f"/var/log/keyrotor/audit.log.shard-{shard}"
        # The same pod as the main Deployment's, but for its labels, its Lease, its shard
        # flags and its audit file (the default anti-affinity spreads each Deployment's pods).
        ours, theirs = (copy.deepcopy(d["spec"]["template"]["spec"])
                        for d in (deployment, deployments["keyrotor"]))
        for pod in (ours, theirs):
            pod["containers"][0]["args"] = [a for a in pod["containers"][0]["args"]
                                            if a not in {"--shard", shard, "--other-shards",
                                                         "a,b", "keyrotor",
                                                         f"keyrotor-shard-{shard}"}
                                            and not a.startswith("/var/log/keyrotor/")]
            term = pod["affinity"]["podAntiAffinity"][
                "preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
            term["labelSelector"] = None
        assert ours == theirs
    lease_ids = {flag(args_of(d), "--leader-election-id") for d in deployments.values()}
    assert len(lease_ids) == 3

    # The decoy reports Service: in front of the main Deployment's pods (any leader can
    # answer a report, whichever shard reconciles the object).
    (reports,) = [o for o in objects["Service"] if o["metadata"]["name"] == "keyrotor-reports"]
    assert [n for n, labels in pods.items() if selects(reports["spec"]["selector"], labels)] \
        == ["keyrotor"]
    objects["Service"].remove(reports)
    # A PodDisruptionBudget and a metrics Service per Deployment, each over its pods only.
    for kind, selector_of in (("PodDisruptionBudget", lambda o: o["spec"]["selector"]),
                              ("Service", lambda o: o["spec"]["selector"])):
        found = {o["metadata"]["name"]: selector_of(o) for o in objects[kind]}
        assert len(found) == 3, found
        for name, labels in pods.items():
            (owner,) = [n for n, sel in found.items() if selects(sel, labels)]
            assert owner.startswith(name) and owner.removeprefix(name) in ("", "-metrics")
    # One ServiceMonitor scrapes all three Services (a Prometheus job each), and the
    # NetworkPolicy covers every operator pod.
    (monitor,) = objects["ServiceMonitor"]
    assert all(selects(monitor["spec"]["selector"], s["metadata"]["labels"])
               for s in objects["Service"])
    (policy,) = objects["NetworkPolicy"]
    assert all(selects(policy["spec"]["podSelector"], labels) for labels in pods.values())

    single = kinds(helm.template(*SHARDED, "--set", "replicaCount=1"))
    assert len(single["Deployment"]) == 3 and "PodDisruptionBudget" not in single


def test_sharding_keeps_the_other_values(helm: Helm) -> None:
    objects = kinds(helm.template(*SHARDED, *NAMESPACED, "--set", "extraArgs={--verbose}",
                                  "--set", "leaderElection.leaseName=rotor"))
    for deployment in objects["Deployment"]:
        args = args_of(deployment)
        assert [args[i + 1] for i, a in enumerate(args) if a == "--namespace"] == \
            ["team-a", "team-b"]
        assert args[-1] == "--verbose"
    leases = [flag(args_of(d), "--leader-election-id") for d in objects["Deployment"]]
    assert leases == ["rotor", "rotor-shard-a", "rotor-shard-b"]
    # Shards share the ServiceAccount and RBAC: no Role or ClusterRole per shard.
    assert {d["spec"]["template"]["spec"]["serviceAccountName"]
            for d in objects["Deployment"]} == {"keyrotor"}
    assert len(objects["Role"]) == len(kinds(helm.template(*NAMESPACED))["Role"])


def test_a_shard_name_too_long_for_its_service_is_refused(helm: Helm) -> None:
    result = helm("template", "keyrotor", str(CHART), "--set",
                  "fullnameOverride=payments-keyrotor-production-eu",
                  "--set", "sharding.shards={a-rather-long-shard-name}", check=False)
    assert result.returncode != 0
    assert ('shard "a-rather-long-shard-name" makes the name '
            'payments-keyrotor-production-eu-shard-a-rather-long-shard-name-metrics longer '
            'than 63 characters') in result.stderr, result.stderr


def test_values_without_sharding_render_as_the_defaults(helm: Helm) -> None:
    """`helm upgrade --reuse-values` from a chart before sharding keeps that chart's values,
    which have no `sharding` at all (helm reuses the old chart's defaults)."""
    for extra in ((), EVERYTHING):
        assert helm.template("--set", "sharding=null", *extra) == helm.template(*extra)
