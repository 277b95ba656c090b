"""TOTP approvers and RotationApprovals (keyrotor.approvals) against the real API server.

Enrolment, the ±1 step window, replay protection (also under a race between two operators),
the lockout after five wrong codes (an injected clock: milliseconds, not 15 minutes), the
judging of RotationApprovals (deleted, never returning a code), the CRD's admission checks,
and the CLI (`keyrotor approvers add/list/remove`, `revoke-now`, `approve`) as a subprocess.
No operator runs here: tests/security/test_emergency_operator.py has the whole flow.
"""

from __future__ import annotations

import base64
import datetime
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pyotp
import pytest
import yaml
from kubernetes import client

from keyrotor import metrics
from keyrotor.approvalcli import qr_text
from keyrotor.approvals import (
    APPROVAL_LABEL,
    LOCKOUT,
    MAX_FAILURES,
    REQUEST_ANNOTATION,
    STATE_ANNOTATION,
    ApproverExists,
    Approvers,
    approval_body,
    approvals_path,
)
from keyrotor.errors import Conflict
from keyrotor.kube import KubeApi
from keyrotor.testing.controlplane import ControlPlane
from keyrotor.testing.toolchain import repo_root
from tests.conftest import api_client

T0 = datetime.datetime(2026, 12, 3, 5, 0, 10, tzinfo=datetime.UTC)  # 10 s into a step
STEP = datetime.timedelta(seconds=30)


class Clock:
    def __init__(self, now: datetime.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime.datetime:
        return self.now


@pytest.fixture(scope="session")
def approval_crds(control_plane: ControlPlane) -> None:
    control_plane.kubectl("apply", "--server-side", "-f", str(repo_root() / "crds"))
    control_plane.wait_established("rotatingsecrets.keyrotor.io",
                                   "rotationapprovals.keyrotor.io")


@pytest.fixture(scope="session")
def kapi(kube: client.ApiClient) -> KubeApi:
    return KubeApi(kube)


@pytest.fixture(autouse=True)
def forget_approvers(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test with a namespace: delete its approvers' Secret and RotationApprovals. The
    seeds made here are checked by these tests; left behind, the suite-wide secret scan
    (tests/secretscan.py) would look for every code they produced in every number it sees."""
    if "namespace" not in request.fixturenames:
        yield
        return
    # Asked for here (set up before, torn down after this fixture).
    namespace = request.getfixturevalue("namespace")
    plane: ControlPlane = request.getfixturevalue("control_plane")
    yield
    plane.kubectl("delete", "secret", "keyrotor-approvers", "-n", namespace,
                  "--ignore-not-found")
    # check=False: tests without the approval_crds fixture may run before the CRD exists.
    plane.kubectl("delete", "rotationapprovals", "--all", "-n", namespace, "--ignore-not-found",
                  check=False)


def seed_of(kapi: KubeApi, namespace: str, name: str) -> str:
    secret = kapi.get_secret(namespace, "keyrotor-approvers") or {}
    return base64.b64decode(secret["data"][name]).decode()


def state_of(kapi: KubeApi, namespace: str) -> dict[str, Any]:
    secret = kapi.get_secret(namespace, "keyrotor-approvers") or {}
    return dict(json.loads(secret["metadata"]["annotations"][STATE_ANNOTATION]))


def wrong(seed: str, at: datetime.datetime) -> str:
    """A 6-digit code that is right for none of the steps around ``at``."""
    totp = pyotp.TOTP(seed)
    window = {totp.at(at + k * STEP) for k in (-1, 0, 1)}
    return next(c for c in (f"{n:06d}" for n in range(1000, 2000)) if c not in window)


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_enrolment_stores_a_seed_and_returns_its_uri(kapi: KubeApi, namespace: str) -> None:
    approvers = Approvers(kapi, namespace=namespace)
    uri = approvers.add("alice", issuer="acme")
    totp = pyotp.parse_uri(uri)
    assert isinstance(totp, pyotp.TOTP)
    assert totp.secret == seed_of(kapi, namespace, "alice")
    assert len(totp.secret) >= 32 and totp.digits == 6 and totp.interval == 30
    assert totp.issuer == "acme" and totp.name == "alice"
    assert approvers.names() == ["alice"]

    with pytest.raises(ApproverExists, match="already enrolled"):
        approvers.add("alice")
    with pytest.raises(ValueError, match="approver name"):
        approvers.add("Alice Smith")
    replaced = pyotp.parse_uri(approvers.add("alice", replace=True))
    assert replaced.secret != totp.secret
    assert replaced.secret == seed_of(kapi, namespace, "alice")

    approvers.add("bob")
    assert approvers.names() == ["alice", "bob"]
    secret = kapi.get_secret(namespace, "keyrotor-approvers") or {}
    assert replaced.secret not in json.dumps(secret["metadata"])  # seeds only in data
    assert approvers.remove("alice") is True
    assert approvers.remove("alice") is False
    assert approvers.names() == ["bob"]


def test_a_right_code_is_accepted_once(kapi: KubeApi, namespace: str) -> None:
    clock = Clock()
    approvers = Approvers(kapi, namespace=namespace, clock=clock)
    approvers.add("alice")
    code = pyotp.TOTP(seed_of(kapi, namespace, "alice")).at(T0)
    accepted = sample("keyrotor_approvals_total", result="Accepted")
    replayed = sample("keyrotor_approvals_total", result="Replayed")

    first = approvers.verify("alice", code)
    assert (first.ok, first.reason) == (True, "Accepted")
    again = approvers.verify("alice", code)
    assert (again.ok, again.reason) == (False, "Replayed")
    clock.now += datetime.timedelta(seconds=15)  # still inside the window of that step
    assert approvers.verify("alice", code).reason == "Replayed"

    assert sample("keyrotor_approvals_total", result="Accepted") == accepted + 1
    assert sample("keyrotor_approvals_total", result="Replayed") == replayed + 2
    state = state_of(kapi, namespace)["alice"]
    assert state == {"lastStep": pyotp.TOTP("A" * 32).timecode(T0), "failures": 0}
    annotations = json.dumps((kapi.get_secret(namespace, "keyrotor-approvers") or {})
                             ["metadata"]["annotations"])
    assert code not in annotations and code not in first.message + again.message
    assert approvers.verify("nobody", code).reason == "UnknownApprover"


def test_one_step_either_side_is_accepted_two_are_not(kapi: KubeApi, namespace: str) -> None:
    approvers = Approvers(kapi, namespace=namespace, clock=Clock())
    for name in ("early", "late", "far"):
        approvers.add(name)
    early = pyotp.TOTP(seed_of(kapi, namespace, "early"))
    late = pyotp.TOTP(seed_of(kapi, namespace, "late"))
    far = pyotp.TOTP(seed_of(kapi, namespace, "far"))

    assert approvers.verify("early", early.at(T0 - STEP)).reason == "Accepted"
    assert approvers.verify("late", late.at(T0 + STEP)).reason == "Accepted"
    # The accepted step must increase: after the next step's code, this step's code (never
    # used) is refused as a replay too.
    assert approvers.verify("late", late.at(T0)).reason == "Replayed"
    assert approvers.verify("early", early.at(T0)).reason == "Accepted"

    assert approvers.verify("far", far.at(T0 - 2 * STEP)).reason == "WrongCode"
    assert approvers.verify("far", far.at(T0 + 2 * STEP)).reason == "WrongCode"
    # Malformed codes count as wrong ones (five of them lock, like any five).
    approvers.add("odd")
    reasons = [approvers.verify("odd", malformed).reason
               for malformed in ("", "12345", "123456789", "12ab56", " " + far.at(T0))]
    assert reasons == ["WrongCode"] * 4 + ["LockedOut"]


def test_five_wrong_codes_lock_the_approver_for_15_minutes(kapi: KubeApi,
                                                          namespace: str) -> None:
    clock = Clock()
    approvers = Approvers(kapi, namespace=namespace, clock=clock)
    approvers.add("mallory")
    approvers.add("alice")
    totp = pyotp.TOTP(seed_of(kapi, namespace, "mallory"))
    lockouts = sample("keyrotor_approver_lockouts_total", approver="mallory")

    reasons = []
    for _ in range(MAX_FAILURES):
        clock.now += datetime.timedelta(seconds=1)
        verdict = approvers.verify("mallory", wrong(totp.secret, clock.now))
        reasons.append(verdict.reason)
        assert not verdict.ok
    assert reasons == ["WrongCode"] * (MAX_FAILURES - 1) + ["LockedOut"]
    assert "locked until" in verdict.message
    assert sample("keyrotor_approver_lockouts_total", approver="mallory") == lockouts + 1
    assert sample("keyrotor_approver_locked", approver="mallory") == 1
    locked_at = clock.now

    # The 6th code is right, and refused: the lock holds for LOCKOUT seconds.
    assert approvers.verify("mallory", totp.at(clock.now)).reason == "Locked"
    clock.now = locked_at + datetime.timedelta(seconds=LOCKOUT - 1)
    assert approvers.verify("mallory", totp.at(clock.now)).reason == "Locked"
    # Another approver is not affected.
    alice = pyotp.TOTP(seed_of(kapi, namespace, "alice"))
    assert approvers.verify("alice", alice.at(clock.now)).reason == "Accepted"

    clock.now = locked_at + datetime.timedelta(seconds=LOCKOUT + 1)
    assert approvers.verify("mallory", totp.at(clock.now)).reason == "Accepted"
    assert sample("keyrotor_approver_locked", approver="mallory") == 0
    assert state_of(kapi, namespace)["mallory"] == {"lastStep": totp.timecode(clock.now),
                                                    "failures": 0}
    # A success resets the count: four wrong codes do not lock again.
    for _ in range(MAX_FAILURES - 1):
        assert approvers.verify("mallory", wrong(totp.secret, clock.now)).reason == "WrongCode"


class GatedApi:
    """A KubeApi whose first PUT waits for ``gate``: its caller read the Secret, then another
    operator wrote it, then this one writes with the stale resourceVersion."""

    def __init__(self, api: KubeApi, gate: threading.Event) -> None:
        self.api, self.gate, self.conflicts = api, gate, 0
        self.held = False
        self.writing = threading.Event()  # set once the caller has read and waits to write

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if method == "PUT" and not self.held:
            self.held = True
            self.writing.set()
            assert self.gate.wait(20)
        try:
            return self.api.request(method, path, **kwargs)
        except Conflict:
            self.conflicts += 1
            raise


def test_two_operators_racing_on_one_code_accept_it_once(
        control_plane: ControlPlane, kapi: KubeApi, namespace: str) -> None:
    clock = Clock()
    Approvers(kapi, namespace=namespace, clock=clock).add("alice")
    code = pyotp.TOTP(seed_of(kapi, namespace, "alice")).at(T0)

    # Deterministic interleaving: A reads, B reads and writes, A writes (409), A re-judges.
    gate = threading.Event()
    with api_client(control_plane) as first, api_client(control_plane) as second:
        gated = GatedApi(KubeApi(first), gate)
        a = Approvers(gated, namespace=namespace, clock=clock)  # type: ignore[arg-type]
        b = Approvers(KubeApi(second), namespace=namespace, clock=clock)
        verdicts: dict[str, str] = {}
        thread = threading.Thread(target=lambda: verdicts.update(a=a.verify("alice", code)
                                                                 .reason))
        thread.start()
        try:
            # B only once A has read: else B may finish first, A read B's write and see a
            # replay without a conflict (that happened in CI).
            assert gated.writing.wait(20)
            verdicts["b"] = b.verify("alice", code).reason
        finally:
            gate.set()
            thread.join(30)
    assert verdicts == {"a": "Replayed", "b": "Accepted"}
    assert gated.conflicts == 1

    # And free-running: eight operators at once, one code: exactly one accepts.
    code = pyotp.TOTP(seed_of(kapi, namespace, "alice")).at(T0 + STEP)
    clock.now = T0 + STEP
    results: list[str] = []
    start = threading.Barrier(8)

    def judge() -> None:
        with api_client(control_plane) as own:
            approvers = Approvers(KubeApi(own), namespace=namespace, clock=clock)
            start.wait(10)
            results.append(approvers.verify("alice", code).reason)

    threads = [threading.Thread(target=judge) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == ["Accepted"] + ["Replayed"] * 7


def create_approval(kapi: KubeApi, namespace: str, rotating_secret: str, request: str,
                    approver: str, code: str) -> str:
    created = kapi.request("POST", approvals_path(namespace), verb="create",
                           body=approval_body(rotating_secret=rotating_secret,
                                              request=request, approver=approver, code=code))
    return str((created or {})["metadata"]["name"])


def approvals_in(kapi: KubeApi, namespace: str) -> list[dict[str, Any]]:
    return list((kapi.request("GET", approvals_path(namespace)) or {}).get("items") or [])


def test_judge_deletes_the_approvals_and_never_returns_a_code(
        approval_crds: None, kapi: KubeApi, namespace: str) -> None:
    clock = Clock()
    approvers = Approvers(kapi, namespace=namespace, clock=clock)
    for name in ("alice", "bob", "carol"):
        approvers.add(name)
    codes = {name: pyotp.TOTP(seed_of(kapi, namespace, name)).at(T0)
             for name in ("alice", "bob", "carol")}
    codes["bob"] = wrong(seed_of(kapi, namespace, "bob"), T0)
    made = {
        "alice": create_approval(kapi, namespace, "web", "r1", "alice", codes["alice"]),
        "bob": create_approval(kapi, namespace, "web", "r1", "bob", codes["bob"]),
        "carol": create_approval(kapi, namespace, "web", "r0", "carol", codes["carol"]),
    }
    elsewhere = create_approval(kapi, namespace, "db", "r1", "alice", codes["alice"])
    listed = {a["metadata"]["name"]: a for a in approvals_in(kapi, namespace)}
    assert listed[made["alice"]]["metadata"]["labels"] == {APPROVAL_LABEL: "web"}

    judged = approvers.judge(namespace, "web", "r1")
    assert {(j.approver, j.request, j.ok, j.reason, j.approval) for j in judged} == {
        ("alice", "r1", True, "Accepted", made["alice"]),
        ("bob", "r1", False, "WrongCode", made["bob"]),
        ("carol", "r0", False, "OtherRequest", made["carol"])}
    text = repr(judged)
    assert not any(code in text for code in codes.values())
    assert [a["metadata"]["name"] for a in approvals_in(kapi, namespace)] == [elsewhere]
    assert approvers.judge(namespace, "web", "r1") == []
    # Carol's code was never verified: still good for her own request.
    assert approvers.verify("carol", codes["carol"]).reason == "Accepted"


@pytest.mark.parametrize(("request_id", "ended", "asked", "reason", "says"), [
    (None, None, "r1", "NoRequest", "no emergency revocation request is open for web"),
    ("r1", None, "r0", "OtherRequest", "request 'r0' is unknown"),
    ("r1", "Expired", "r0", "OtherRequest", "request 'r0' is unknown"),
    ("r1", "Expired", "r1", "RequestEnded", "request 'r1' expired"),
    ("r1", "Approved", "r1", "RequestEnded", "request 'r1' already ended (Approved)"),
])
def test_approvals_of_no_open_request_are_deleted_unverified(
        approval_crds: None, kapi: KubeApi, namespace: str, request_id: str | None,
        ended: str | None, asked: str, reason: str, says: str) -> None:
    """A RotationApproval that names no open request is deleted and rejected without its code
    being checked: a wrong code does not count toward bob's lockout, a right one is not used."""
    clock = Clock()
    approvers = Approvers(kapi, namespace=namespace, clock=clock)
    approvers.add("bob")
    seed = seed_of(kapi, namespace, "bob")
    bad, good = wrong(seed, T0), pyotp.TOTP(seed).at(T0)
    made = [create_approval(kapi, namespace, "web", asked, "bob", code) for code in (bad, good)]
    before = sample("keyrotor_approvals_total", result=reason)

    judged = approvers.judge(namespace, "web", request_id, ended=ended)
    assert sorted((j.approval, j.approver, j.request, j.ok, j.reason) for j in judged) == \
        sorted((name, "bob", asked, False, reason) for name in made)
    assert all(says in j.message for j in judged), [j.message for j in judged]
    assert bad not in repr(judged) and good not in repr(judged)
    assert approvals_in(kapi, namespace) == []
    assert sample("keyrotor_approvals_total", result=reason) == before + 2
    # Neither code was looked at: no wrong code counted, the right one still unused.
    assert "bob" not in state_of(kapi, namespace)
    assert approvers.verify("bob", good).reason == "Accepted"


def test_two_judges_take_each_approval_once(control_plane: ControlPlane, approval_crds: None,
                                            kapi: KubeApi, namespace: str) -> None:
    clock = Clock()
    Approvers(kapi, namespace=namespace, clock=clock).add("alice")
    seed = seed_of(kapi, namespace, "alice")
    names = {create_approval(kapi, namespace, "web", "r1", "alice", wrong(seed, T0))
             for _ in range(4)}
    seen: list[str] = []
    start = threading.Barrier(3)

    def judge() -> None:
        with api_client(control_plane) as own:
            approvers = Approvers(KubeApi(own), namespace=namespace, clock=clock)
            start.wait(10)
            seen.extend(j.approval for j in approvers.judge(namespace, "web", "r1"))

    threads = [threading.Thread(target=judge) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(seen) == sorted(names)  # each judged exactly once, by one of them
    assert state_of(kapi, namespace)["alice"]["failures"] == 4


def create_yaml(control_plane: ControlPlane, namespace: str,
                **spec: Any) -> subprocess.CompletedProcess[str]:
    body = {"apiVersion": "keyrotor.io/v1alpha1", "kind": "RotationApproval",
            "metadata": {"generateName": "web-"},
            "spec": {"rotatingSecret": "web", "action": "RevokeNow", "request": "r1",
                     "approver": "alice", "code": "123456", **spec}}
    return control_plane.kubectl("create", "-n", namespace, "-f", "-", check=False,
                                 input=yaml.safe_dump(body))


@pytest.mark.parametrize(("spec", "field"), [
    ({"code": "12ab56"}, "spec.code"),
    ({"code": "12345"}, "spec.code"),
    ({"code": "123456789"}, "spec.code"),
    ({"action": "Rotate"}, "spec.action"),
    ({"approver": "Alice Smith"}, "spec.approver"),
    ({"request": "r1; rm"}, "spec.request"),
    ({"rotatingSecret": "Web_1"}, "spec.rotatingSecret"),
])
def test_admission_names_the_field(control_plane: ControlPlane, approval_crds: None,
                                   namespace: str, spec: dict[str, str], field: str) -> None:
    result = create_yaml(control_plane, namespace, **spec)
    assert result.returncode != 0
    assert field in result.stderr, result.stderr
    if "action" in spec:
        assert 'supported values: "RevokeNow"' in result.stderr


def test_admission_accepts_a_good_one_and_keeps_it_immutable(
        control_plane: ControlPlane, approval_crds: None, namespace: str) -> None:
    created = create_yaml(control_plane, namespace, code="12345678")
    assert created.returncode == 0, created.stderr
    name = created.stdout.split()[0]  # rotationapproval.keyrotor.io/web-xxxxx created
    patched = control_plane.kubectl("patch", "-n", namespace, name, "--type=merge", "-p",
                                    '{"spec": {"code": "654321"}}', check=False)
    assert patched.returncode != 0 and "spec is immutable" in patched.stderr
    listed = control_plane.kubectl("get", "rapproval", "-n", namespace).stdout
    assert "RevokeNow" in listed and "alice" in listed and "12345678" not in listed
    assert "web" in control_plane.kubectl("get", "keyrotor", "-n", namespace).stdout


# ---- the CLI -------------------------------------------------------------------------------

def keyrotor(plane: ControlPlane, *args: str,
             stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keyrotor", *args, "--kubeconfig",
                           str(plane.kubeconfig)], capture_output=True, text=True,
                          input=stdin, timeout=120)


def test_cli_approvers_add_list_remove(control_plane: ControlPlane, kapi: KubeApi,
                                       namespace: str) -> None:
    added = keyrotor(control_plane, "approvers", "add", "alice", "--operator-namespace",
                     namespace)
    assert added.returncode == 0, added.stderr
    uri = next(line for line in added.stdout.splitlines() if line.startswith("otpauth://"))
    totp = pyotp.parse_uri(uri)
    assert totp.secret == seed_of(kapi, namespace, "alice")
    assert qr_text(uri) in added.stdout  # the QR code of exactly that URI
    assert "█" in added.stdout and "shown only now" in added.stdout

    again = keyrotor(control_plane, "approvers", "add", "alice", "--operator-namespace",
                     namespace)
    assert again.returncode == 1 and "already enrolled" in again.stderr
    assert totp.secret not in again.stdout + again.stderr

    assert keyrotor(control_plane, "approvers", "add", "bob", "--operator-namespace",
                    namespace, "--issuer", "acme").returncode == 0
    Approvers(kapi, namespace=namespace).verify("alice", totp.now())
    listed = keyrotor(control_plane, "approvers", "list", "--operator-namespace", namespace)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split()[1:] for line in listed.stdout.splitlines()[1:]}
    assert set(rows) == {"alice", "bob"}
    assert rows["bob"][0] == "never" and rows["alice"][0].startswith("20")
    assert totp.secret not in listed.stdout

    removed = keyrotor(control_plane, "approvers", "remove", "alice", "--operator-namespace",
                       namespace)
    assert removed.returncode == 0, removed.stderr
    assert Approvers(kapi, namespace=namespace).names() == ["bob"]
    assert keyrotor(control_plane, "approvers", "remove", "alice", "--operator-namespace",
                    namespace).returncode == 1


def rotating_secret(control_plane: ControlPlane, namespace: str, name: str) -> None:
    body = {"apiVersion": "keyrotor.io/v1alpha1", "kind": "RotatingSecret",
            "metadata": {"name": name},
            "spec": {"secretName": name, "generator": {"random": {"length": 32}},
                     "emergency": {"approvals": 2}}}
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))


def test_cli_revoke_now_and_approve_create_the_objects(
        control_plane: ControlPlane, approval_crds: None, kapi: KubeApi,
        namespace: str) -> None:
    rotating_secret(control_plane, namespace, "web")
    none = keyrotor(control_plane, "approve", "web", "-n", namespace, "--approver", "bob",
                    "--code", "123456", "--wait", "0")
    assert none.returncode == 1 and "no emergency revocation request" in none.stderr
    assert approvals_in(kapi, namespace) == []

    started = keyrotor(control_plane, "revoke-now", "web", "-n", namespace, "--approver",
                       "alice", "--code", "-", "--wait", "0", stdin="246810\n")
    assert started.returncode == 0, started.stderr
    assert "246810" not in started.stdout + started.stderr
    assert "presenters still on an old key fail" in started.stdout
    request = ((kapi.get_rotating_secret(namespace, "web") or {})["metadata"]["annotations"]
               [REQUEST_ANNOTATION])
    assert re.fullmatch(r"r\d{8}-\d{6}-[0-9a-f]{6}", request)
    assert request in started.stdout

    approved = keyrotor(control_plane, "approve", "web", "-n", namespace, "--approver", "bob",
                        "--code", "135790", "--wait", "0")
    assert approved.returncode == 0, approved.stderr
    specs = sorted((a["spec"] for a in approvals_in(kapi, namespace)),
                   key=lambda s: s["approver"])
    assert specs == [
        {"rotatingSecret": "web", "action": "RevokeNow", "request": request,
         "approver": "alice", "code": "246810"},
        {"rotatingSecret": "web", "action": "RevokeNow", "request": request,
         "approver": "bob", "code": "135790"}]
    labels = {a["metadata"]["labels"][APPROVAL_LABEL] for a in approvals_in(kapi, namespace)}
    assert labels == {"web"}
    # A second revoke-now joins the request in progress rather than starting another.
    joined = keyrotor(control_plane, "revoke-now", "web", "-n", namespace, "--approver",
                      "carol", "--code", "111111", "--wait", "0")
    assert joined.returncode == 0 and f"request {request}" in joined.stdout

    bad = keyrotor(control_plane, "approve", "web", "-n", namespace, "--approver", "bob",
                   "--code", "12ab", "--wait", "0")
    assert bad.returncode == 1 and "6 to 8 digits" in bad.stderr

    # Nobody judges here (no operator): after --wait the CLI takes its code back.
    for item in approvals_in(kapi, namespace):
        kapi.request("DELETE", approvals_path(namespace, item["metadata"]["name"]))
    unjudged = keyrotor(control_plane, "approve", "web", "-n", namespace, "--approver", "bob",
                        "--code", "975310", "--wait", "1.5")
    assert unjudged.returncode == 1 and "no judgement within" in unjudged.stdout
    assert approvals_in(kapi, namespace) == []


def test_help_says_presenters_fail() -> None:
    shown = subprocess.run([sys.executable, "-m", "keyrotor", "revoke-now", "--help"],
                           capture_output=True, text=True, timeout=60).stdout
    assert "presenters still on an old key fail" in " ".join(shown.split())
