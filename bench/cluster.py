"""Shared by the scale benchmarks of issue 10: a control plane that tells the operator's requests
apart, a raw REST client and watcher for the benchmark itself, the operator process, and a
sampler of its memory and CPU.

How the operator's requests are counted. kube-apiserver's ``apiserver_request_total`` has no
label for the client (its labels are verb, group, version, resource, subresource, scope,
component, code, dry_run), so it cannot be split by client. Two measurements are taken instead:

* exact, per client: the operator runs as its own user ``keyrotor-operator`` (a client
  certificate signed by a CA the apiserver trusts via ``--client-ca-file``; group
  ``system:masters``), and the apiserver writes an audit log (``--audit-policy-file``) with
  one line per request of that user only (level Metadata: verb, resource, code, time; never a
  body). Every figure "by the operator" comes from there.
* cross-check, all clients: ``apiserver_request_total`` scraped before and after and diffed,
  minus the requests the benchmark itself made (it counts them, see :class:`Rest`). What is
  left over beyond the operator's audit count is the apiserver's own loopback traffic (e.g. its
  identity Lease every 10 s) and watches of the benchmark still open (a WATCH is counted when
  it ends). ``code="429"`` is read from here.

The benchmarks measure whatever ``keyrotor`` the Python path gives (record() names it). To
measure a commit while the work tree changes under you, run from a snapshot:

    mkdir /tmp/kr-C && git archive C operator crds | tar -xC /tmp/kr-C && echo C >/tmp/kr-C/COMMIT
    source scripts/lib/bootstrap.sh && cd bench && PYTHONPATH=/tmp/kr-C/operator $PY burst.py 1000

($KEYROTOR_BENCH_DRY=1 prints the block without appending it to RESULTS.md.)
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import math
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keyrotor.testing.controlplane import ControlPlane, free_port
from keyrotor.testing.toolchain import repo_root
from keyrotor.testing.waiting import wait_for

OPERATOR_USER = "keyrotor-operator"
GROUP_PATH = "/apis/keyrotor.io/v1alpha1"
MANAGED = "app.kubernetes.io/managed-by=keyrotor"
READS = frozenset({"get", "list", "watch"})
# apiserver_request_total's verbs, named as the audit log names them.
METRIC_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "APPLY": "apply",
                "GET": "get", "LIST": "list", "WATCH": "watch", "DELETE": "delete",
                "DELETECOLLECTION": "deletecollection", "CONNECT": "connect"}
AUDIT_POLICY = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
                "omitStages": ["RequestReceived"],
                "rules": [{"level": "Metadata", "users": [OPERATOR_USER]}, {"level": "None"}]}

Key = tuple[str, str]  # (verb, resource[/subresource])
SMALL_SCALE = ["**Small scale**: proves the script works (the issue's figures are at 1,000 "
               "and 10,000 objects); the keyrotor line above names the code measured.", ""]
CROSS_NOTE = ("Third column: the operator's own user in the apiserver's audit log (exact). "
              "Last column: apiserver_request_total after minus before, minus the requests "
              "the benchmark made itself: it also holds the apiserver's own loopback requests "
              "(endpoints, leases) and the benchmark's watches, which the apiserver counts "
              "when they close.")


# ---- the control plane ---------------------------------------------------------------------

@dataclass
class BenchPlane(ControlPlane):
    """The test control plane plus: a client CA for the operator's own user, an audit log of
    that user's requests, and etcd's space quota raised to 8 GiB (the default 2 GiB does not
    hold thousands of 512 KiB Secrets)."""

    etcd_quota_bytes: int = 8 * 2**30

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    @property
    def operator_kubeconfig(self) -> Path:
        return self.workdir / "operator.kubeconfig"

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        if name == "etcd":
            args = [*args, f"--quota-backend-bytes={self.etcd_quota_bytes}"]
        return super()._spawn(name, args)

    def __enter__(self) -> BenchPlane:
        self.start()
        return self

    def _start_apiserver(self) -> None:
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        client_ca = _client_ca_and_cert(self.workdir)
        self.extra_apiserver_flags = [
            *self.extra_apiserver_flags, f"--client-ca-file={client_ca}",
            f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}",
            "--audit-log-maxsize=0", "--audit-log-mode=blocking"]
        super()._start_apiserver()

    def _write_kubeconfig(self) -> None:
        super()._write_kubeconfig()
        config = yaml.safe_load(self.kubeconfig.read_text())
        config["users"] = [{"name": OPERATOR_USER, "user": {
            "client-certificate": str(self.workdir / "operator.crt"),
            "client-key": str(self.workdir / "operator.key")}}]
        config["contexts"] = [{"name": OPERATOR_USER, "context": {
            "cluster": "keyrotor-envtest", "user": OPERATOR_USER}}]
        config["current-context"] = OPERATOR_USER
        self.operator_kubeconfig.write_text(yaml.safe_dump(config))
        self.operator_kubeconfig.chmod(0o600)


def _client_ca_and_cert(folder: Path) -> Path:
    """A CA for client certificates and the operator's certificate (CN keyrotor-operator,
    O system:masters); returns the CA's path."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-client-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=7))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, OPERATOR_USER),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (folder / "client-ca.crt").write_bytes(ca.public_bytes(pem))
    (folder / "operator.crt").write_bytes(cert.public_bytes(pem))
    (folder / "operator.key").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return folder / "client-ca.crt"


# ---- the benchmark's own client ------------------------------------------------------------

class Rest:
    """A small REST client for the benchmark (user admin): one keep-alive connection per
    thread, and a count of every request it made, so they can be subtracted from
    ``apiserver_request_total``."""

    def __init__(self, plane: ControlPlane) -> None:
        self.host, self.port, self.token = "127.0.0.1", plane.api_port, plane.admin_token
        self.context = ssl.create_default_context(cafile=str(plane.ca_file))
        self._local = threading.local()
        self._lock = threading.Lock()
        self.sent: Counter[Key] = Counter()

    def connection(self, timeout: float | None = 60) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context,
                                           timeout=timeout)

    def headers(self, content_type: str = "application/json") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": content_type,
                "Accept": "application/json"}

    def count(self, verb: str, resource: str) -> None:
        with self._lock:
            self.sent[(verb, resource)] += 1

    def request(self, method: str, path: str, body: Any = None, *, key: Key,
                content_type: str = "application/json") -> tuple[int, Any]:
        """``key``: (verb, resource) as the apiserver counts it, e.g. ("create", "secrets")."""
        self.count(*key)
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(2):
            conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self.connection()
            try:
                conn.request(method, path, body=data, headers=self.headers(content_type))
                resp = conn.getresponse()
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def ok(self, method: str, path: str, body: Any = None, *, key: Key,
           content_type: str = "application/json") -> Any:
        status, answer = self.request(method, path, body, key=key, content_type=content_type)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {answer}")
        return answer

    def metrics(self) -> str:
        conn = self.connection()
        try:
            conn.request("GET", "/metrics", headers=self.headers())
            resp = conn.getresponse()
            return resp.read().decode()
        finally:
            conn.close()

    def create_namespace(self, name: str) -> None:
        self.ok("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": name}},
                key=("create", "namespaces"))

    def list(self, path: str, *, label_selector: str | None = None) -> dict[str, Any]:
        query = f"?labelSelector={urllib.parse.quote(label_selector)}" if label_selector else ""
        resource = path.rstrip("/").rsplit("/", 1)[1]
        answer: dict[str, Any] = self.ok("GET", path + query, key=("list", resource))
        return answer


def rs_path(namespace: str, name: str = "") -> str:
    return f"{GROUP_PATH}/namespaces/{namespace}/rotatingsecrets" + (f"/{name}" if name else "")


def rotating_secret(name: str, namespace: str, *, generator: dict[str, Any] | None = None,
                    every: str | None = "720h", min_overlap: str = "1s",
                    labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """A RotatingSecret whose Secret has its name; random 32 bytes unless ``generator``."""
    rotation: dict[str, str] = {"minOverlap": min_overlap}
    if every:
        rotation["every"] = every
    return {"apiVersion": "keyrotor.io/v1alpha1", "kind": "RotatingSecret",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": {"secretName": name, "rotation": rotation,
                     "generator": generator or {"random": {"length": 32}}, **spec}}


def create_all(rest: Rest, bodies: list[dict[str, Any]], *, threads: int = 16
               ) -> dict[str, tuple[float, float]]:
    """POST every body at once from a thread pool; returns name -> (sent, answered) wall
    clock times. Any answer but 201 is an error."""
    def one(body: dict[str, Any]) -> tuple[str, tuple[float, float]]:
        meta = body["metadata"]
        if body["kind"] == "RotatingSecret":
            path, key = rs_path(meta["namespace"]), ("create", "rotatingsecrets")
        else:
            path, key = f"/api/v1/namespaces/{meta['namespace']}/secrets", ("create", "secrets")
        sent = time.time()
        rest.ok("POST", path, body, key=key)
        return meta["name"], (sent, time.time())

    with ThreadPoolExecutor(threads) as pool:
        return dict(pool.map(one, bodies))


def annotate_all(rest: Rest, namespace: str, names: Iterable[str], key: str, value: str,
                 *, threads: int = 16) -> None:
    patch = {"metadata": {"annotations": {key: value}}}

    def one(name: str) -> None:
        rest.ok("PATCH", rs_path(namespace, name), patch, key=("patch", "rotatingsecrets"),
                content_type="application/merge-patch+json")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, names))


class Watcher:
    """Watches one collection from a thread (list, then watch from its resourceVersion; no
    polling) and records, per object name, the wall-clock time at which ``predicate`` first
    held. Objects already matching at the initial list count as reached at list time."""

    def __init__(self, rest: Rest, path: str, *, label_selector: str | None = None,
                 predicate: Callable[[dict[str, Any]], bool] = lambda _: True) -> None:
        self.rest, self.path, self.selector, self.predicate = rest, path, label_selector, \
            predicate
        self.reached: dict[str, float] = {}
        self.latest: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._conn: http.client.HTTPSConnection | None = None
        self._cond = threading.Condition()
        self._rv = self._relist()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"watch {path}")
        self._thread.start()

    def _see(self, obj: dict[str, Any], now: float) -> None:
        name = obj["metadata"]["name"]
        with self._cond:
            self.latest[name] = obj
            if name not in self.reached and self.predicate(obj):
                self.reached[name] = now
                self._cond.notify_all()

    def _relist(self) -> str:
        answer = self.rest.list(self.path, label_selector=self.selector)
        now = time.time()
        for item in answer["items"]:
            self._see(item, now)
        return str(answer["metadata"]["resourceVersion"])

    def _run(self) -> None:
        resource = self.path.rstrip("/").rsplit("/", 1)[1]
        while not self._stop.is_set():
            query = {"watch": "1", "allowWatchBookmarks": "true", "resourceVersion": self._rv,
                     "timeoutSeconds": "1800"}
            if self.selector:
                query["labelSelector"] = self.selector
            conn = self._conn = self.rest.connection(timeout=None)
            self.rest.count("watch", resource)
            try:
                conn.request("GET", f"{self.path}?{urllib.parse.urlencode(query)}",
                             headers=self.rest.headers())
                resp = conn.getresponse()
                while not self._stop.is_set():
                    line = resp.readline()
                    if not line:
                        break
                    event = json.loads(line)
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        if obj.get("code") == 410:
                            self._rv = self._relist()
                        break
                    self._rv = obj["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._see(obj, time.time())
            except (OSError, http.client.HTTPException, ValueError):
                if not self._stop.is_set():
                    time.sleep(0.2)
            finally:
                conn.close()

    def wait(self, count: int, timeout: float) -> bool:
        """Until ``count`` objects reached the predicate (True) or ``timeout`` (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.reached) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 1.0))
        return True

    def reached_all(self, count: int, timeout: float, what: str, log: Path | None = None
                    ) -> float:
        """Wait until ``count`` objects reached the predicate; the wall-clock time the last
        of them did. TimeoutError otherwise, counting ``what`` (and naming the operator's
        ``log``, if given)."""
        if not self.wait(count, timeout):
            raise TimeoutError(f"{len(self.reached)} of {count} {what} after {timeout:.0f} s"
                               + (f"; see {log}" if log else ""))
        return max(self.reached.values())

    def stop(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(2)
        self._thread.join(10)


# ---- counting requests ---------------------------------------------------------------------

_REQUEST_LINE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$",
                           re.MULTILINE)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def request_totals(metrics_text: str) -> Counter[tuple[str, str, str]]:
    """apiserver_request_total as (verb, resource[/subresource], code) -> count; resource ""
    for non-resource URLs such as /metrics."""
    totals: Counter[tuple[str, str, str]] = Counter()
    for match in _REQUEST_LINE.finditer(metrics_text):
        labels = dict(_LABEL.findall(match["labels"]))
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        verb = METRIC_VERBS.get(labels.get("verb", ""), labels.get("verb", "").lower())
        totals[(verb, resource, labels.get("code", ""))] += int(float(match["value"]))
    return totals


@dataclass
class MetricsWindow:
    """apiserver_request_total before and after, for every client together."""

    rest: Rest
    before: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    own_before: Counter[Key] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.own_before = Counter(self.rest.sent)
        self.before = request_totals(self.rest.metrics())

    def diff(self) -> tuple[Counter[Key], Counter[Key], int]:
        """(all clients, all clients minus the benchmark's own requests, answers with 429)."""
        after = request_totals(self.rest.metrics())
        own = Counter(self.rest.sent)
        own.subtract(self.own_before)
        total: Counter[Key] = Counter()
        too_many = 0
        for (verb, resource, code), value in after.items():
            delta = value - self.before.get((verb, resource, code), 0)
            if delta and resource:
                total[(verb, resource)] += delta
            if code == "429":
                too_many += delta
        others = Counter(total)
        others.subtract(own)
        return total, +others, too_many


@dataclass(frozen=True)
class Request:
    at: float  # wall clock, when the apiserver received it
    verb: str
    resource: str  # resource[/subresource]
    code: int


class AuditLog:
    """The apiserver's audit log (the operator's user only), read from a byte offset."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def since(self, offset: int) -> list[Request]:
        with open(self.path, "rb") as f:
            f.seek(offset)
            data = f.read()
        out = []
        for line in data.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line still being written
            verb, stage = event.get("verb", ""), event.get("stage")
            # One line per request: a watch when it starts, anything else when it completes.
            if stage != ("ResponseStarted" if verb == "watch" else "ResponseComplete"):
                continue
            ref = event.get("objectRef") or {}
            resource = ref.get("resource", "") or event.get("requestURI", "")
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            at = datetime.datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp()
            out.append(Request(at, verb, resource, int(
                (event.get("responseStatus") or {}).get("code") or 0)))
        return out


def wait_quiet(audit: AuditLog, *, quiet: float = 5.0, timeout: float = 300.0) -> float:
    """Until the operator made no request for ``quiet`` seconds (the audit log stopped
    growing); returns the wall-clock time of its last growth. Cheap: watches the file size."""
    size, changed = audit.mark(), time.time()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now_size = audit.mark()
        if now_size != size:
            size, changed = now_size, time.time()
        elif time.time() - changed >= quiet:
            return changed
    raise TimeoutError(f"the operator kept making requests for {timeout:.0f} s")


def status_is(*, phase: str = "Idle", **fields: int) -> Callable[[dict[str, Any]], bool]:
    """A predicate on a RotatingSecret: in ``phase`` with each status field at least as
    given, e.g. ``status_is(currentVersion=1)``."""
    def check(obj: dict[str, Any]) -> bool:
        status = obj.get("status") or {}
        return status.get("phase") == phase and all(
            int(status.get(k) or 0) >= v for k, v in fields.items())
    return check


def by_key(requests: Iterable[Request]) -> Counter[Key]:
    return Counter((r.verb, r.resource) for r in requests)


def is_event(key: Key) -> bool:
    return key[1] == "events"


def request_table(counts: Counter[Key], *, per: int = 1, cross: Counter[Key] | None = None
                  ) -> list[str]:
    """Markdown lines: one row per verb and resource, writes first, events last."""
    def order(key: Key) -> tuple[int, int, int, str, str]:
        return (is_event(key), is_audit_head(key), is_review(key), key[0] in READS, key[1],
                key[0])

    head = "| verb | resource | operator (audit) |" + (" per object |" if per > 1 else "") + \
        (" all clients minus bench (metrics) |" if cross is not None else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for key in sorted(set(counts) | set(cross or {}), key=order):
        row = f"| {key[0]} | {key[1]} | {counts.get(key, 0)} |"
        if per > 1:
            row += f" {counts.get(key, 0) / per:.2f} |"
        if cross is not None:
            row += f" {cross.get(key, 0)} |"
        lines.append(row)
    return lines


def is_review(key: Key) -> bool:
    """SelfSubjectAccessReviews and the like: a create that stores nothing (a question)."""
    return key[1].endswith("reviews")


def is_audit_head(key: Key) -> bool:
    """The audit chain's head (keyrotor.audit): a ConfigMap written at most once a second
    whatever the number of objects, so counted apart, like events (the operator writes no
    other ConfigMap)."""
    return key[1] == "configmaps"


def writes(counts: Counter[Key]) -> tuple[int, int]:
    """(writes other than events and the audit head, event writes); access reviews are
    questions, not writes. :func:`audit_head_writes` counts the rest."""
    w = sum(v for k, v in counts.items() if k[0] not in READS and not is_event(k)
            and not is_review(k) and not is_audit_head(k))
    e = sum(v for k, v in counts.items() if k[0] not in READS and is_event(k))
    return w, e


def audit_head_writes(counts: Counter[Key]) -> int:
    return sum(v for k, v in counts.items() if k[0] not in READS and is_audit_head(k))


def peak_rate(requests: list[Request], window: float = 1.0) -> float:
    """Most requests received within one ``window``-second bucket, per second."""
    buckets = Counter(math.floor(r.at / window) for r in requests)
    return max(buckets.values(), default=0) / window


# ---- the operator process ------------------------------------------------------------------

class Operator:
    """``python -m keyrotor run`` (or ``python *launcher* run``) as the operator's own user,
    with its log in ``log``."""

    def __init__(self, plane: BenchPlane, log: Path, *, namespaces: Iterable[str] = (),
                 extra: Iterable[str] = (), env: dict[str, str] | None = None,
                 launcher: Iterable[str] = ("-m", "keyrotor")) -> None:
        self.plane, self.log = plane, log
        self.metrics_port, self.liveness_port = free_port(), free_port()
        self.args = [sys.executable, *launcher, "run",
                     *[a for ns in namespaces for a in ("-n", ns)],
                     "--kubeconfig", str(plane.operator_kubeconfig),
                     "--metrics-port", str(self.metrics_port),
                     "--liveness-port", str(self.liveness_port), *extra]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, *, watching: str | None = "rotatingsecrets", timeout: float = 60) -> None:
        """Start, then wait for /readyz and (when ``watching``) for the operator's first watch
        of that resource in the audit log: from then on it sees every change."""
        audit = AuditLog(self.plane.audit_log)
        mark = audit.mark()
        self.started = time.time()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)
        wait_for(lambda: self._get(self.liveness_port, "/readyz") is not None,
                 timeout=timeout, interval=0.1, what="operator ready")
        if watching:
            wait_for(lambda: any(r.verb == "watch" and r.resource == watching
                                 for r in audit.since(mark)),
                     timeout=timeout, interval=0.1, what=f"operator watching {watching}")

    def _get(self, port: int, path: str, timeout: float = 2) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"operator exited with {self.proc.returncode}; the end of its "
                               f"log ({self.log}):\n{tail}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}",
                                        timeout=timeout) as resp:
                return str(resp.read().decode())
        except OSError:
            return None

    def metrics(self) -> str:
        return self._get(self.metrics_port, "/metrics", timeout=10) or ""

    def series(self, name: str, text: str | None = None) -> dict[str, float]:
        """Samples of metric ``name`` (exact name, labels as the key string)."""
        out = {}
        for line in (self.metrics() if text is None else text).splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                key, value = line.rsplit(" ", 1)
                if key.split("{", 1)[0] == name:
                    out[key] = float(value)
        return out

    def healthz_latency(self) -> float | None:
        """Seconds /healthz (served on the operator's event loop) takes to answer."""
        started = time.perf_counter()
        return None if self._get(self.liveness_port, "/healthz", timeout=10) is None \
            else time.perf_counter() - started

    def gauge(self, name: str) -> float | None:
        """The value of the unlabelled metric ``name``; None while it is not served."""
        return self.series(name).get(name)

    def kill(self) -> None:
        """SIGKILL: no shutdown at all (a crash); start() starts it again, same ports."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@dataclass(frozen=True)
class Sample:
    at: float
    rss: int  # bytes
    hwm: int  # bytes, peak RSS so far (VmHWM)
    cpu: float  # user+system seconds so far


def read_proc(pid: int) -> Sample | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)

    def kib(name: str) -> int:
        return int(fields.get(name, "0 kB").split()[0]) * 1024

    ticks = stat.rsplit(")", 1)[1].split()
    cpu = (int(ticks[11]) + int(ticks[12])) / os.sysconf("SC_CLK_TCK")
    return Sample(time.time(), kib("VmRSS"), kib("VmHWM"), cpu)


class Sampler:
    """Samples a process's RSS, peak RSS and CPU time every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sampler")
        self._thread.start()

    def _run(self) -> None:
        while True:
            sample = read_proc(self.pid)
            if sample is not None:
                self.samples.append(sample)
            if self._stop.wait(self.interval):
                return

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join(5)
        sample = read_proc(self.pid)
        if sample is not None:
            self.samples.append(sample)
        return self.samples

    def peak_rss(self) -> int:
        return max((max(s.rss, s.hwm) for s in self.samples), default=0)

    def cpu_between(self, start: float, end: float) -> float:
        """CPU seconds used between two wall-clock times (from the last sample at or before
        ``start`` to the first at or after ``end``: a little wider, never narrower)."""
        if not self.samples:
            return 0.0
        before = [s for s in self.samples if s.at <= start] or self.samples[:1]
        after = [s for s in self.samples if s.at >= end] or self.samples[-1:]
        return after[0].cpu - before[-1].cpu


class HealthzProbe:
    """Times /healthz every ``interval`` from outside: the answer waits for the operator's
    event loop, so its latency bounds the loop's lag from above (plus one local HTTP round
    trip, about a millisecond)."""

    def __init__(self, operator: Operator, interval: float = 0.05) -> None:
        self.operator, self.interval = operator, interval
        self.latencies: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="healthz")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            latency = self.operator.healthz_latency()
            if latency is not None:
                self.latencies.append((time.time(), latency))
            self._stop.wait(self.interval)

    def between(self, start: float, end: float) -> list[float]:
        return [latency for at, latency in self.latencies if start <= at <= end]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


# ---- one benchmark's cluster ---------------------------------------------------------------

@dataclass
class Bench:
    plane: BenchPlane
    rest: Rest
    audit: AuditLog
    workdir: Path

    def watch_rotating(self, namespace: str, *, label_selector: str | None = None,
                       **status: int) -> Watcher:
        """A Watcher of the namespace's RotatingSecrets reaching Idle with each ``status``
        field at least as given (see :func:`status_is`)."""
        return Watcher(self.rest, rs_path(namespace), label_selector=label_selector,
                       predicate=status_is(**status))

    def watch_secrets(self, namespace: str) -> Watcher:
        """A Watcher of the Secrets keyrotor manages in the namespace: when each appeared."""
        return Watcher(self.rest, f"/api/v1/namespaces/{namespace}/secrets",
                       label_selector=MANAGED)


@contextlib.contextmanager
def cluster(*namespaces: str, apiserver_flags: Sequence[str] = ()) -> Iterator[Bench]:
    """A control plane with keyrotor's CRD and the given namespaces; ``apiserver_flags`` are
    added to kube-apiserver's."""
    plane = BenchPlane()
    plane.extra_apiserver_flags = [*plane.extra_apiserver_flags, *apiserver_flags]
    with plane:
        plane.kubectl("apply", "--server-side", "-f", str(repo_root() / "crds"))
        plane.wait_established("rotatingsecrets.keyrotor.io")
        rest = Rest(plane)
        # keyrotor-system: the operator's own namespace, where it keeps the audit chain's head
        # (without it, each head write fails and is not counted as a write).
        for ns in dict.fromkeys((*namespaces, "keyrotor-system")):
            rest.create_namespace(ns)
        yield Bench(plane, rest, AuditLog(plane.audit_log), plane.workdir)


def reconcile_all(bench: Bench, namespace: str, prefix: str, count: int, *, timeout: float,
                  quiet: float, quiet_timeout: float = 300.0) -> float:
    """The common setup: create ``count`` RotatingSecrets ``{prefix}-00000``… (random 32
    bytes, every 720h) at once, wait until each has its Secret and is Idle at version 1 (else
    TimeoutError after ``timeout``), then until the operator made no request for ``quiet``
    seconds (:func:`wait_quiet`). Returns the seconds from the first POST to then (the
    watches are opened before it)."""
    secrets = bench.watch_secrets(namespace)
    ready = bench.watch_rotating(namespace, currentVersion=1)
    started = time.monotonic()
    try:
        create_all(bench.rest, [rotating_secret(f"{prefix}-{i:05d}", namespace)
                                for i in range(count)])
        if not (secrets.wait(count, timeout) and ready.wait(count, timeout)):
            raise TimeoutError(f"setup: {len(ready.reached)} of {count} Idle at version 1")
    finally:
        secrets.stop()
        ready.stop()
    wait_quiet(bench.audit, quiet=quiet, timeout=quiet_timeout)
    return time.monotonic() - started


# ---- figures -------------------------------------------------------------------------------

def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def mb(value: float) -> str:
    return f"{value / 1e6:.0f} MB"


def histogram_quantile(q: float, before: dict[str, float], after: dict[str, float]
                       ) -> tuple[float, int] | None:
    """The q-quantile of a Prometheus histogram's observations between two scrapes (bucket
    series ``name_bucket{...le="x"}`` as returned by :meth:`Operator.series`), linear within a
    bucket as PromQL's histogram_quantile; None when nothing was observed."""
    def buckets(series: dict[str, float]) -> dict[float, float]:
        out = {}
        for key, value in series.items():
            le = re.search(r'le="([^"]+)"', key)
            if le:
                out[float(le[1])] = value
        return out

    b, a = buckets(before), buckets(after)
    bounds = sorted(a)
    counts = [a[x] - b.get(x, 0.0) for x in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank, lower, below = q * counts[-1], 0.0, 0.0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= rank:
            if math.isinf(bound):
                return lower, int(counts[-1])
            share = (rank - below) / (cumulative - below) if cumulative > below else 1.0
            return lower + (bound - lower) * share, int(counts[-1])
        lower, below = bound, cumulative
    return lower, int(counts[-1])
