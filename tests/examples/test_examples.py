"""Every example in examples/ is accepted by the real API server, and rotates for real.

* Each ``examples/*.yaml`` is discovered (a new example is covered without editing this file):
  it must hold one RotatingSecret without a namespace, be listed in examples/README.md, and
  pass a server-side dry run against the real kube-apiserver with the CRD installed.
* Then every example is applied for real in one namespace watched by one operator, with its
  endpoints pointed at the real test servers (Vault, SoftHSM2, PostgreSQL, Prometheus, the
  reference key service for webhook targets, an HTTP acceptor that reads the Secret) and its
  times shortened (minOverlap 1s, probe rounds of 200 ms). Each must issue version 1, then
  complete one rotation asked for with the ``keyrotor.io/rotate`` annotation, with the Secret
  holding version 2 and nothing else. All are applied first and rotated together, so the
  whole tier costs about one rotation.
* What a cluster would add is played here: a presenter process on ``keyrotor.client``
  (scraped by the real Prometheus) for each Secret that a ``prometheus`` consumer asks about,
  and, as no controllers run, the workloads of ``rolloutRestartTargets`` with their status
  written as their controller would once the restart is asked for.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from kubernetes import client

from keyrotor.kube import KubeApi
from keyrotor.testing.controlplane import ControlPlane, free_port
from keyrotor.testing.democonsumer import read_slots
from keyrotor.testing.postgresserver import PostgresServer
from keyrotor.testing.processes import spawn, stop
from keyrotor.testing.prometheusserver import PrometheusServer
from keyrotor.testing.secretmount import SecretMirror
from keyrotor.testing.softhsm import SoftHsmToken
from keyrotor.testing.toolchain import repo_root
from keyrotor.testing.vaultserver import VaultServer
from keyrotor.testing.waiting import wait_for
from tests.operator.conftest import (
    SECRET_VALUES,
    OperatorProcess,
    _scan_for_leaks,
    remember_secret,
)
from tests.operator.helpers import condition, start_key_service, status_of, wait_status

EXAMPLES_DIR = repo_root() / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))


def load(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert len(docs) == 1, f"{path.name}: one RotatingSecret per file, found {len(docs)}"
    doc: dict[str, Any] = docs[0]
    return doc


# ---- the files themselves ------------------------------------------------------------------


def test_examples_are_one_resource_each_and_indexed() -> None:
    assert len(EXAMPLES) >= 10
    readme = (EXAMPLES_DIR / "README.md").read_text()
    listed = set(re.findall(r"\(([\w.-]+\.yaml)\)", readme))
    assert listed == {p.name for p in EXAMPLES}, "examples/README.md must link every example"
    names, secrets = set(), set()
    for path in EXAMPLES:
        doc = load(path)
        assert doc["apiVersion"] == "keyrotor.io/v1alpha1" and doc["kind"] == "RotatingSecret"
        assert "namespace" not in doc["metadata"], f"{path.name}: applied with -n, no namespace"
        assert path.read_text().startswith("#"), f"{path.name}: begins with what it rotates"
        names.add(doc["metadata"]["name"])
        secrets.add(doc["spec"]["secretName"])
    # Distinct, so that all of them can be applied to one namespace.
    assert len(names) == len(secrets) == len(EXAMPLES)


@pytest.fixture(scope="module")
def scratch_namespace(kube: client.ApiClient) -> str:
    name = "examples-dry-run"
    core = client.CoreV1Api(kube)
    if not core.list_namespace(field_selector=f"metadata.name={name}").items:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_accepted_by_a_server_side_dry_run(path: Path, control_plane: ControlPlane, crds: None,
                                           scratch_namespace: str) -> None:
    done = control_plane.kubectl("apply", "--server-side", "--dry-run=server", "-o", "json",
                                 "-n", scratch_namespace, "-f", str(path), check=False)
    assert done.returncode == 0, done.stderr
    applied = json.loads(done.stdout)
    assert applied["metadata"]["namespace"] == scratch_namespace
    assert applied["spec"]["strategy"] in ("TwoKeys", "OneKey")  # defaults filled in
    assert "rotation" in applied["spec"] and "verification" in applied["spec"]


# ---- real servers behind the examples' endpoints --------------------------------------------


class LocalService:
    """One HTTP server for the examples' HTTP endpoints.

    * ``/accept/<secret>``: an acceptor that answers 200 when a request header carries a key
      the Secret holds (current, next or previous) at the moment of the request, else 401;
    * ``/rewrap``: a Transit rewrap hook that records the call and answers 204.
    """

    def __init__(self, kapi: KubeApi, namespace: str) -> None:
        self.kapi, self.namespace = kapi, namespace
        self.rewraps: list[dict[str, Any]] = []
        self.accepted: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet, and no header (a key) ever reaches a log

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status = outer.handle(self.path, dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = do_HEAD = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> int:
        if path == "/rewrap":
            self.rewraps.append(json.loads(body))
            return 204
        if path.startswith("/accept/"):
            name = path.removeprefix("/accept/")
            held = read_slots(self.kapi.get_secret(self.namespace, name)).values()
            presented = {v.removeprefix("Bearer ").encode() for v in headers.values()}
            if presented & set(held):
                self.accepted[name] = self.accepted.get(name, 0) + 1
                return 200
            return 401
        return 404

    def start(self) -> LocalService:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Stage:
    """One namespace, one operator, the real servers; rewrites examples to reach them."""

    plane: ControlPlane
    kapi: KubeApi
    namespace: str
    tmp: Path
    softhsm: SoftHsmToken
    vault: VaultServer
    postgres: PostgresServer
    service: LocalService
    prometheus: PrometheusServer
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    mirrors: list[SecretMirror] = field(default_factory=list)
    fleets: dict[str, Path] = field(default_factory=dict)  # Secret -> its presenter's tally
    jobs: list[str] = field(default_factory=list)  # Prometheus jobs of the presenters
    workloads: set[tuple[str, str]] = field(default_factory=set)  # (kind, name)
    stopping: threading.Event = field(default_factory=threading.Event)
    key_services: dict[str, str] = field(default_factory=dict)  # example name -> URL
    applied: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> adapted doc
    first: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> version 1 Secret
    problems: dict[str, str] = field(default_factory=dict)
    vault_login: tuple[str, Path] | None = None

    def secret(self, name: str, **data: str) -> None:
        """Create (or update) an ordinary Secret an example refers to."""
        SECRET_VALUES.update(v for v in data.values() if len(v) >= 12)
        manifest = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                    "stringData": data}
        self.plane.kubectl("apply", "-n", self.namespace, "-f", "-",
                           input=json.dumps(manifest))

    def adapt(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The example as applied here: same resource, local endpoints, second-scale times."""
        doc = copy.deepcopy(doc)
        spec, name = doc["spec"], doc["metadata"]["name"]
        rotation = spec.setdefault("rotation", {})
        rotation.update(minOverlap="1s", maxOverlap="2m")
        verification = spec.setdefault("verification", {})
        verification["interval"] = "200ms"
        verification["successesRequired"] = min(int(verification.get("successesRequired", 3)), 2)
        if "delay" in spec.get("revocation", {}):
            spec["revocation"]["delay"] = "0s"
        generator = spec["generator"]
        if "vault" in generator:
            self._vault(generator["vault"])
        if "hsm" in generator:
            self._hsm(generator["hsm"])
        target = spec.get("target")
        if target:
            target["activateAfter"] = "0s"  # no presenter to wait for
            if "postgres" in target:
                self._postgres_target(target["postgres"])
            if "webhook" in target:
                mode = "one" if spec.get("strategy") == "OneKey" else "two"
                self._webhook(name, target["webhook"], mode)
        for consumer in spec.get("consumers") or ():
            if "http" in consumer:
                http = consumer["http"]
                http.pop("caBundle", None)
                http.pop("insecureSkipTLSVerify", None)
                http["url"] = f"{self.service.url}/accept/{spec['secretName']}"
            if "postgres" in consumer:
                consumer["postgres"].update(self._postgres_server())
            if "prometheus" in consumer:
                consumer["prometheus"]["url"] = self.prometheus.url
                consumer["prometheus"].pop("caBundle", None)
                self.fleets[spec["secretName"]] = self.tmp / f"presenter-{name}.json"
        for workload in spec.get("rolloutRestartTargets") or ():
            self._workload(workload["kind"], workload["name"])
        return doc

    def start_presenter(self, secret: str) -> None:
        """A presenter on keyrotor.client with a kubelet-style mount of ``secret`` (0.2 s
        behind), sending to the acceptor and scraped by Prometheus: the fleet a prometheus
        consumer asks about. Its metrics say secret="<the mount's name>", as in a pod."""
        mirror = SecretMirror(lambda: self.kapi.get_secret(self.namespace, secret),
                              self.tmp / "mounts" / secret, period=0.2)
        mirror.sync()
        self.mirrors.append(mirror.start())
        port, stats, job = free_port(), self.fleets[secret], f"{self.namespace}-{secret}"
        self.procs.append(spawn(
            [sys.executable, "-m", "keyrotor.testing.consumerapp", "presenter",
             "--mount", str(self.tmp / "mounts" / secret), "--metrics-port", str(port),
             "--url", f"{self.service.url}/accept/{secret}", "--period", "0.1",
             "--stats", str(stats)], self.tmp / f"presenter-{secret}.log"))
        self.prometheus.scrape(job, f"127.0.0.1:{port}")
        self.jobs.append(job)
        wait_for(lambda: self.prometheus.up(job), timeout=30, what=f"presenter of {secret}")

    def _workload(self, kind: str, name: str) -> None:
        if (kind, name) in self.workloads:
            return
        labels = {"app": name}
        spec: dict[str, Any] = {"selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"containers": [{"name": name, "image": "registry.invalid/app:1"}]}}}
        if kind != "DaemonSet":
            spec["replicas"] = 2
        if kind == "StatefulSet":
            spec["serviceName"] = name
        self.plane.kubectl("apply", "-n", self.namespace, "-f", "-", input=json.dumps({
            "apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}))
        self.workloads.add((kind, name))

    def play_controllers(self) -> None:
        """No controller-manager runs here: write each workload's status as its controller
        would once a changed pod template (a restart) has rolled out."""
        while not self.stopping.wait(0.1):
            for kind, name in self.workloads:
                body = self.kapi.get_workload(self.namespace, kind, name) or {}
                generation = body.get("metadata", {}).get("generation", 0)
                if (body.get("status") or {}).get("observedGeneration") == generation:
                    continue
                if kind == "DaemonSet":
                    status = {"desiredNumberScheduled": 2, "updatedNumberScheduled": 2,
                              "numberAvailable": 2, "numberReady": 2,
                              "currentNumberScheduled": 2, "numberMisscheduled": 0}
                else:
                    status = {"replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
                              "availableReplicas": 2}
                plural = {"Deployment": "deployment", "StatefulSet": "stateful_set",
                          "DaemonSet": "daemon_set"}[kind]
                getattr(self.kapi.apps, f"patch_namespaced_{plural}_status")(
                    name, self.namespace,
                    {"status": {**status, "observedGeneration": generation}})

    def _vault(self, vault: dict[str, Any]) -> None:
        vault["address"] = self.vault.address
        vault.pop("caBundle", None)
        auth = vault["auth"]
        if "tokenSecretRef" in auth:
            ref = auth["tokenSecretRef"]
            self.secret(ref["name"], **{ref.get("key", "token"): self.vault.root_token})
        if "kubernetes" in auth:
            mount, token_path = self._vault_kubernetes_auth(auth["kubernetes"]["role"])
            auth["kubernetes"].update(mount=mount, tokenPath=str(token_path))
        if "kv" in vault:
            vault["kv"]["path"] = f"{self.namespace}/{vault['kv']['path']}"
        if "transit" in vault:
            transit = vault["transit"]
            transit["key"] = f"{self.namespace}-{transit['key']}"
            if "rewrapHook" in transit:
                transit["rewrapHook"]["url"] = f"{self.service.url}/rewrap"

    def _vault_kubernetes_auth(self, role: str) -> tuple[str, Path]:
        """Vault's Kubernetes auth method at a mount of its own, trusting this control plane's
        ServiceAccount tokens; the operator logs in with a token of ServiceAccount keyrotor in
        the examples' namespace. Returns the mount and the token file."""
        if self.vault_login is None:
            ns, mount = self.namespace, f"kubernetes-{self.namespace}"
            for account in ("keyrotor", "vault-reviewer"):
                self.plane.kubectl("create", "serviceaccount", account, "-n", ns)
            self.plane.kubectl("create", "clusterrolebinding", f"vault-reviewer-{ns}",
                               "--clusterrole=system:auth-delegator",
                               f"--serviceaccount={ns}:vault-reviewer")
            reviewer = self.plane.kubectl("create", "token", "vault-reviewer", "-n", ns,
                                          "--duration=1h").stdout.strip()
            vault = self.vault.client()
            vault.sys.enable_auth_method("kubernetes", path=mount)
            vault.auth.kubernetes.configure(
                kubernetes_host=self.plane.url, kubernetes_ca_cert=self.plane.ca_file.read_text(),
                token_reviewer_jwt=reviewer, mount_point=mount)
            vault.sys.create_or_update_policy(f"examples-{ns}", (
                f'path "secret/data/{ns}/*" {{ capabilities = ["create", "read", "update"] }}\n'
                f'path "secret/metadata/{ns}/*" {{ capabilities = ["read"] }}\n'
                f'path "secret/destroy/{ns}/*" {{ capabilities = ["update"] }}\n'
                f'path "secret/delete/{ns}/*" {{ capabilities = ["update"] }}\n'))
            vault.auth.kubernetes.create_role(
                role, bound_service_account_names=["keyrotor"],
                bound_service_account_namespaces=[ns], policies=[f"examples-{ns}"], ttl="1h",
                mount_point=mount)
            token = self.plane.kubectl("create", "token", "keyrotor", "-n", ns,
                                       "--duration=1h").stdout.strip()
            SECRET_VALUES.update((token, reviewer))
            path = self.tmp / "keyrotor-sa-token"
            path.write_text(token)
            self.vault_login = mount, path
        return self.vault_login

    def _hsm(self, hsm: dict[str, Any]) -> None:
        hsm.update(module=self.softhsm.module, tokenLabel=self.softhsm.label)
        ref = hsm["pinSecretRef"]
        self.secret(ref["name"], **{ref.get("key", "pin"): self.softhsm.pin})
        if "labelPrefix" in hsm:  # one SoftHSM token per run: keep each run's labels apart
            hsm["labelPrefix"] = f"{self.namespace}-{hsm['labelPrefix']}"

    def _postgres_server(self) -> dict[str, Any]:
        return {"host": self.postgres.host, "port": self.postgres.port, "sslMode": "disable",
                "database": "postgres"}

    def _postgres_target(self, pg: dict[str, Any]) -> None:
        pg.update(self._postgres_server())
        # One server per run: roles of their own (the operator tests use app_blue/app_green),
        # sharing the server's group role "app", on which the rotator has ADMIN OPTION.
        suffix = self.namespace.rsplit("-", 1)[-1]
        pg["roles"] = [f"{role}_{suffix}" for role in pg["roles"]]
        if "memberOf" in pg:
            pg["memberOf"] = "app"
        ref = pg["adminSecretRef"]
        self.secret(ref["name"], **{ref.get("usernameKey", "username"): "rotator",
                                    ref.get("passwordKey", "password"):
                                        self.postgres.rotator_password})

    def _webhook(self, name: str, webhook: dict[str, Any], mode: str) -> None:
        folder = self.tmp / f"keyservice-{name}"
        folder.mkdir()
        proc, url, token = start_key_service(folder, mode)
        self.procs.append(proc)
        self.key_services[name] = url
        webhook["url"] = url
        webhook.pop("caBundle", None)
        ref = webhook["authSecretRef"]
        self.secret(ref["name"], **{ref.get("key", "token"): token})
        SECRET_VALUES.add(token)


@pytest.fixture(scope="module")
def stage(control_plane: ControlPlane, crds: None, kube: client.ApiClient, kapi: KubeApi,
          softhsm: SoftHsmToken, vault: VaultServer, postgres: PostgresServer,
          prometheus: PrometheusServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    """Every example that can rotate here, applied to one namespace watched by one operator,
    issued (version 1), and asked to rotate once; the tests below check each rotation."""
    tmp = tmp_path_factory.mktemp("examples")
    namespace = f"examples-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(kube).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    service = LocalService(kapi, namespace).start()
    # The softhsm fixture set SOFTHSM2_CONF in this process; the operator inherits it.
    # Restarts are debounced for 0.5 s instead of 10 s.
    operator = OperatorProcess(kubeconfig=control_plane.kubeconfig, namespace=namespace,
                               log_path=tmp / "operator.log",
                               extra_args=["--restart-debounce", "0.5"])
    stage = Stage(control_plane, kapi, namespace, tmp, softhsm, vault, postgres, service,
                  prometheus)
    controllers = threading.Thread(target=stage.play_controllers, daemon=True)
    try:
        operator.start()
        for path in EXAMPLES:
            doc = stage.adapt(load(path))
            stage.applied[doc["metadata"]["name"]] = doc
            control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
        controllers.start()
        # They all work at once; wait for each in turn, then ask all to rotate.
        for name in stage.applied:
            try:
                wait_status(kapi, namespace, name, lambda s: s.get("currentVersion") == 1
                            and s.get("phase") == "Idle", timeout=60, what=f"{name} version 1")
            except TimeoutError:
                stage.problems[name] = f"no version 1: status {status_of(kapi, namespace, name)}"
                continue
            secret = kapi.get_secret(namespace, name)
            remember_secret(secret)
            assert secret is not None
            stage.first[name] = secret
            if name in stage.fleets:
                stage.start_presenter(name)
            kapi.annotate_rotating_secret(namespace, name, "keyrotor.io/rotate", "examples")
        yield stage
        _scan_for_leaks(control_plane, namespace, operator.log_text(), operator.metrics())
    finally:
        # Leave nothing for a later operator that watches every namespace (its finalizer
        # is removed by this one, which still runs).
        control_plane.kubectl("delete", "rotatingsecrets", "--all", "-n", namespace,
                              "--timeout=30s", check=False)
        operator.stop()
        stage.stopping.set()
        service.stop()
        for proc in stage.procs:
            stop(proc)
        for mirror in stage.mirrors:
            mirror.stop()
        for job in stage.jobs:  # Prometheus is shared by the run: no target left down
            prometheus.scrape(job)
        print(f"---- operator log ({operator.log_path}) ----\n{operator.log_text()[-20000:]}")


# ---- one rotation per example ----------------------------------------------------------------


def text(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_rotates_once(path: Path, stage: Stage) -> None:
    name = load(path)["metadata"]["name"]
    assert name not in stage.problems, stage.problems[name]
    ns, kapi = stage.namespace, stage.kapi
    status = wait_status(kapi, ns, name, lambda s: s.get("rotationCount") == 1
                         and s.get("phase") == "Idle", timeout=60, what=f"{name} rotated once")
    assert status["currentVersion"] == 2 and status["latestVersion"] == 2
    assert "previousVersion" not in status and "nextVersion" not in status
    assert condition(status, "Ready")["status"] == "True"
    assert condition(status, "Degraded")["status"] == "False"
    # The retirement verdict rests on every consumer probed then, rollouts included.
    spec = stage.applied[name]["spec"]
    expected = {c["name"] for c in spec.get("consumers") or ()
                if c.get("during", "Both") in ("Both", "Retirement")}
    expected |= {f"{w['kind']}/{w['name']}" for w in spec.get("rolloutRestartTargets") or ()}
    verified = {c["name"] for c in status.get("consumers") or ()
                if c["ok"] and c["version"] == 2}
    assert verified >= expected, status.get("consumers")

    before, after = stage.first[name], kapi.get_secret(ns, name)
    assert after is not None
    remember_secret(after)
    assert after["metadata"]["annotations"]["keyrotor.io/current-version"] == "2"
    assert json.loads(text(after, "versions.json")) == {"current": 2}
    assert "next" not in after["data"] and "previous" not in after["data"]
    def published(secret: dict[str, Any]) -> dict[str, str]:
        return {k: v for k, v in secret["data"].items() if k.split(".")[0] == "current"}

    assert published(after) != published(before)  # (a Transit key's name stays; its version not)
    check_material(stage, stage.applied[name]["spec"], before, after)


def check_material(stage: Stage, spec: dict[str, Any], before: dict[str, Any],
                   after: dict[str, Any]) -> None:
    """The new version is what the example's generator and target promise."""
    generator, target = spec["generator"], spec.get("target") or {}
    current = base64.b64decode(after["data"]["current"])
    if "random" in generator:
        length, encoding = generator["random"].get("length", 32), \
            generator["random"].get("encoding", "base64url")
        value = current.decode()
        if encoding == "base64url":
            assert len(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))) == length
        elif encoding == "hex":
            assert len(bytes.fromhex(value)) == length
        elif encoding == "alphanumeric":
            assert len(value) == length and value.isascii() and value.isalnum()
        else:
            assert len(value) == length and set(value) <= set(generator["random"]["alphabet"])
    if "symmetric" in generator:
        sizes = {"AES-128": 16, "AES-256": 32, "HMAC-SHA256": 32}
        assert len(current) == sizes[generator["symmetric"]["algorithm"]]
    if "keyPair" in generator:
        check_key_pair(generator["keyPair"], before, after)
    if "vault" in generator:
        vault = generator["vault"]
        if "kv" in vault:
            kv = stage.vault.client().secrets.kv.v2.read_secret_version(
                vault["kv"]["path"], version=2, mount_point=vault["kv"].get("mount", "secret"),
                raise_on_deleted_version=True)
            assert current.decode() == kv["data"]["data"]["value"]
            versions = stage.vault.client().secrets.kv.v2.read_secret_metadata(
                vault["kv"]["path"], mount_point=vault["kv"].get("mount", "secret"),
            )["data"]["versions"]
            if not spec.get("revocation", {}).get("keepHistory", 0):  # version 1 is gone
                destroyed = vault["kv"].get("destroy", True)
                assert versions["1"]["destroyed"] is destroyed
                assert destroyed or versions["1"]["deletion_time"]
        else:
            transit = vault["transit"]
            mount = transit.get("mount", "transit")
            assert current.decode() == f"{mount}/{transit['key']}"
            assert text(after, "current.key-version") == "2"
            key = stage.vault.client().secrets.transit.read_key(
                transit["key"], mount_point=mount)["data"]
            keep = spec.get("revocation", {}).get("keepHistory", 0)
            assert key["min_decryption_version"] == 2 - keep and len(key["keys"]) == 1 + keep
            if "rewrapHook" in transit and not keep:  # asked before version 1 stopped working
                assert {"key": f"{mount}/{transit['key']}", "retiringVersion": 1,
                        "currentVersion": 2} in stage.service.rewraps
    if "hsm" in generator:
        prefix = generator["hsm"].get("labelPrefix") or \
            f"{stage.namespace}-{spec['secretName']}"
        assert current.decode().startswith(f"pkcs11:token={stage.softhsm.label};")
        assert f";object={prefix}-v2;" in current.decode()
        if generator["hsm"].get("key") == "EC-P256":
            assert text(after, "current.pub").startswith("-----BEGIN PUBLIC KEY-----")
    for consumer in spec.get("consumers") or ():
        if "http" in consumer:  # the acceptor was asked, and said yes
            assert stage.service.accepted.get(spec["secretName"], 0) >= 2
    if spec["secretName"] in stage.fleets:  # the presenter never saw a request fail
        tally = json.loads(stage.fleets[spec["secretName"]].read_text())
        assert tally["sent"] > 0 and tally.get("failed", 0) == 0, tally
    for workload in spec.get("rolloutRestartTargets") or ():
        body = stage.kapi.get_workload(stage.namespace, workload["kind"], workload["name"])
        assert body is not None
        annotations = body["spec"]["template"]["metadata"]["annotations"]
        assert annotations[f"restarted.keyrotor.io/{after['metadata']['name']}"] == "2"
    if "webhook" in target:
        held = stage.key_services[after["metadata"]["name"]]
        assert requests.get(f"{held}/keys", timeout=5).json()["versions"] == [2]
        api = requests.get(f"{held}/api", headers={"Authorization": f"Bearer {current.decode()}"},
                           timeout=5)
        assert api.status_code == 200
    if "postgres" in target:
        role = text(after, "current.username")
        assert role == target["postgres"]["roles"][0]  # version 2 is roles[2 % 2]
        with stage.postgres.connect(role, current.decode()) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)


def check_key_pair(spec: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> None:
    formats = spec.get("formats") or ["pem", "jwk"]
    expected: type[Any] = {"Ed25519": ed25519.Ed25519PrivateKey}.get(
        spec["algorithm"], rsa.RSAPrivateKey if spec["algorithm"].startswith("RSA")
        else ec.EllipticCurvePrivateKey)
    if "pem" in formats:
        key = serialization.load_pem_private_key(base64.b64decode(after["data"]["current"]),
                                                 password=None)
        assert isinstance(key, expected)
        if isinstance(key, rsa.RSAPrivateKey):
            assert key.key_size == int(spec["algorithm"][4:])
        assert text(after, "current.pub").startswith("-----BEGIN PUBLIC KEY-----")
    if "jwk" in formats:
        public = json.loads(text(after, "current.pub.jwk"))
        old = json.loads(text(before, "current.pub.jwk"))
        assert public["kid"] != old["kid"]
        # Only the valid key is published once the old one is revoked.
        assert [k["kid"] for k in json.loads(text(after, "jwks.json"))["keys"]] == \
            [public["kid"]]
        private = json.loads(text(after, "current.jwk" if "pem" in formats else "current"))
        assert private["kid"] == public["kid"] and "d" in private
