"""Two shards, 2,000 RotatingSecrets: each object is handled by exactly one shard (Flux-style
label sharding, keyrotor.io/shard=<name>), each shard holding its own Lease. The filtering is
done by the API server (a label selector on kopf's list and watch): no shard's process receives
the other shard's objects at all. A relabelled object moves to the other shard, and its
Secret stays."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml
from kubernetes import client

from keyrotor.testing.controlplane import ControlPlane
from keyrotor.testing.waiting import wait_for
from tests.operator.conftest import OperatorProcess

OBJECTS = 2000
SHARDS = ("a", "b")


def handled(operator: OperatorProcess) -> set[str]:
    """The RotatingSecrets this shard reports a current version for."""
    names = set()
    for line in operator.metrics().splitlines():
        if line.startswith("keyrotor_current_version{"):
            names.add(line.split('name="', 1)[1].split('"', 1)[0])
    return names


def received(operator: OperatorProcess) -> set[str]:
    """The RotatingSecrets whose events reached this shard's process: kopf logs each handled
    event (--verbose), in JSON with the object's reference."""
    names = set()
    for line in operator.log_text().splitlines():
        if line.startswith("{") and "Handler 'observe' succeeded" in line:
            names.add(json.loads(line)["object"]["name"])
    return names


def test_two_shards_split_two_thousand_objects(control_plane: ControlPlane, crds: None,
                                               kube: client.ApiClient, namespace: str,
                                               tmp_path: Path) -> None:
    shards = {name: OperatorProcess(
        kubeconfig=control_plane.kubeconfig, namespace=namespace,
        log_path=tmp_path / f"shard-{name}.log",
        extra_args=["--shard", name, "--leader-elect", "--leader-election-namespace",
                    namespace, "--log-format", "json"]) for name in SHARDS}
    for shard in shards.values():
        shard.start()
    started = time.monotonic()
    try:
        items = [{"apiVersion": "keyrotor.io/v1alpha1", "kind": "RotatingSecret",
                  "metadata": {"name": f"s{n:04d}", "namespace": namespace,
                               "labels": {"keyrotor.io/shard": SHARDS[n % 2]}},
                  "spec": {"secretName": f"s{n:04d}", "generator": {"random": {}},
                           **({"deletionPolicy": "Delete"} if n == 0 else {})}}
                 for n in range(OBJECTS)]
        control_plane.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump(
            {"apiVersion": "v1", "kind": "List", "items": items}))

        def issued() -> int:
            listed = json.loads(control_plane.kubectl(
                "get", "rotatingsecrets", "-n", namespace, "-o", "json").stdout)
            return sum((i.get("status") or {}).get("currentVersion") == 1
                       for i in listed["items"])

        wait_for(lambda: issued() == OBJECTS, timeout=240, interval=2,
                 what=f"all {OBJECTS} first versions")
        elapsed = time.monotonic() - started
        seen = {name: handled(shard) for name, shard in shards.items()}
        events = {name: received(shard) for name, shard in shards.items()}
        # Relabelled: s0000 (deletionPolicy Delete) moves from shard a to b; a forgets it on
        # the DELETED its watch gets (the object no longer matches), without deleting its
        # Secret.
        control_plane.kubectl("label", "rotatingsecret", "s0000", "-n", namespace,
                              "keyrotor.io/shard=b", "--overwrite")
        wait_for(lambda: "s0000" in handled(shards["b"]) and
                 "s0000" not in handled(shards["a"]), timeout=60, what="s0000 moved to b")
        secret = json.loads(control_plane.kubectl("get", "secret", "s0000", "-n", namespace,
                                                  "-o", "json").stdout)
        assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "keyrotor"
    finally:
        for shard in shards.values():
            shard.stop()
    expected = {name: {f"s{n:04d}" for n in range(OBJECTS) if SHARDS[n % 2] == name}
                for name in SHARDS}
    assert seen == expected  # every object by its shard, none by the other
    assert events == expected  # and no shard's process received the other's objects
    for name, shard in shards.items():
        assert f"keyrotor.io/shard={name} (server-side)" in shard.log_text()
    leases = client.CoordinationV1Api(kube).list_namespaced_lease(namespace)
    holders = {lease.metadata.name: lease.spec.holder_identity for lease in leases.items}
    assert set(holders) == {"keyrotor-shard-a", "keyrotor-shard-b"}
    print(f"{OBJECTS} objects, 2 shards: every first version in {elapsed:.1f}s; objects whose "
          "events reached each shard: " + ", ".join(f"{n}: {len(events[n])}" for n in SHARDS))
