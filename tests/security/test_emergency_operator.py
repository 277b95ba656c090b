"""Emergency revocation end to end: a running operator, two enrolled approvers, the CLI.

``spec.emergency.approvals: 2``; alice runs ``keyrotor revoke-now``, her code replayed and a
wrong code of bob's are rejected with Warning events, bob's right code completes it: the
Secret holds only the new version, the old value is gone, ``status.emergency.lastResult`` is
Approved, the events name both approvers. No TOTP code or seed appears in any event, status,
annotation, operator log line or metric.
"""

from __future__ import annotations

import base64
import datetime
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
import yaml

from keyrotor.approvals import STATE_ANNOTATION, Approvers, approval_body, approvals_path
from keyrotor.audit import KIND
from keyrotor.kube import KubeApi
from keyrotor.status import parse_ts
from keyrotor.testing.controlplane import ControlPlane
from keyrotor.testing.waiting import wait_for
from tests.operator.conftest import (  # noqa: F401 - fixtures
    OperatorProcess,
    crds,
    kapi,
    remember_secret,
    scanned_operator,
)
from tests.operator.helpers import events_of, wait_status


@pytest.fixture
def emergency_operator(control_plane: ControlPlane, crds: None, namespace: str,  # noqa: F811
                       tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> Iterator[OperatorProcess]:
    # The approvers' Secret lives in the operator's namespace: here the test's own.
    monkeypatch.setenv("POD_NAMESPACE", namespace)
    with scanned_operator(control_plane, namespace, tmp_path) as proc:
        yield proc


def keyrotor(plane: ControlPlane, *args: str, stdin: str | None = None,
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keyrotor", *args, "--kubeconfig",
                           str(plane.kubeconfig)], capture_output=True, text=True,
                          input=stdin, timeout=120)


def spawn_keyrotor(plane: ControlPlane, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "keyrotor", *args, "--kubeconfig",
                             str(plane.kubeconfig)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def seed_of(kapi: KubeApi, namespace: str, name: str) -> str:  # noqa: F811
    secret = kapi.get_secret(namespace, "keyrotor-approvers") or {}
    return base64.b64decode(secret["data"][name]).decode()


def fresh_code(totp: pyotp.TOTP, used: set[str]) -> str:
    """The current code, once it differs from every code used so far (a new step)."""
    return wait_for(lambda: (code if (code := totp.now()) not in used else None),
                    timeout=35, interval=0.2, what="the next TOTP step")


def test_two_approvers_revoke_now(control_plane: ControlPlane,
                                  emergency_operator: OperatorProcess,
                                  kapi: KubeApi, namespace: str) -> None:  # noqa: F811
    body = {"apiVersion": "keyrotor.io/v1alpha1", "kind": "RotatingSecret",
            "metadata": {"name": "web"},
            "spec": {"secretName": "web", "generator": {"random": {"length": 32}},
                     "rotation": {"every": "720h"}, "emergency": {"approvals": 2}}}
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))
    wait_status(kapi, namespace, "web", lambda s: s.get("currentVersion") == 1,
                what="version 1 issued")
    before = kapi.get_secret(namespace, "web") or {}
    remember_secret(before)
    old_value = before["data"]["current"]

    for name in ("alice", "bob"):
        added = keyrotor(control_plane, "approvers", "add", name, "--operator-namespace",
                         namespace)
        assert added.returncode == 0, added.stderr
    seeds = {name: seed_of(kapi, namespace, name) for name in ("alice", "bob")}
    alice, bob = pyotp.TOTP(seeds["alice"]), pyotp.TOTP(seeds["bob"])
    codes: set[str] = set()

    # alice starts the request; her command follows it in the background.
    alice_code = fresh_code(alice, codes)
    codes.add(alice_code)
    started = spawn_keyrotor(control_plane, "revoke-now", "web", "-n", namespace,
                             "--approver", "alice", "--code", alice_code, "--wait", "90")
    try:
        status = wait_status(kapi, namespace, "web", lambda s: (s.get("emergency") or {})
                             .get("approvedBy") == ["alice"], what="alice's approval counted")
        request = status["emergency"]["request"]
        assert status["emergency"].get("lastResult") is None
        # While it is open the status says how far it is: 1 of 2, until start + requestTTL.
        assert status["emergency"]["required"] == 2
        start = parse_ts(status["emergency"]["startTime"])
        expiry = parse_ts(status["emergency"]["expiryTime"])
        assert expiry - start == datetime.timedelta(minutes=10)
        expires_at = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")

        # Her code again: Replayed. A wrong code of bob's: WrongCode. Neither counts.
        replayed = keyrotor(control_plane, "approve", "web", "-n", namespace, "--approver",
                            "alice", "--code", alice_code, "--wait", "30")
        assert replayed.returncode == 1, replayed.stdout + replayed.stderr
        assert "(Replayed)" in replayed.stdout
        wrong = next(c for c in (f"{n:06d}" for n in range(100, 200))
                     if not bob.verify(c, valid_window=2))
        codes.add(wrong)
        refused = keyrotor(control_plane, "approve", "web", "-n", namespace, "--approver",
                           "bob", "--code", wrong, "--wait", "30")
        assert refused.returncode == 1 and "(WrongCode)" in refused.stdout, refused.stdout
        assert ((kapi.get_rotating_secret(namespace, "web") or {})["status"]["emergency"]
                ["approvedBy"]) == ["alice"]

        bob_code = fresh_code(bob, codes)
        codes.add(bob_code)
        approved = keyrotor(control_plane, "approve", "web", "-n", namespace, "--approver",
                            "bob", "--code", bob_code, "--wait", "60")
        assert approved.returncode == 0, approved.stdout + approved.stderr
        assert "version 2 is current" in approved.stdout
        out, err = started.communicate(timeout=100)
    finally:
        if started.poll() is None:
            started.kill()
    for title, text in (("revoke-now", out + err), ("approve (replayed)", replayed.stdout),
                        ("approve (wrong)", refused.stdout), ("approve", approved.stdout)):
        print(f"---- keyrotor {title} ----\n{text}")
    assert started.returncode == 0, out + err
    assert (f"approved by alice: 1 of 2 approvals, expires at {expires_at}; another approver "
            "runs `keyrotor approve web") in out
    assert f"(1 of 2 approvals, expires at {expires_at})" in approved.stdout

    status = wait_status(kapi, namespace, "web",
                         lambda s: (s.get("emergency") or {}).get("lastResult") == "Approved",
                         what="emergency revocation approved")
    assert status["emergency"]["request"] == request
    assert status["emergency"]["approvedBy"] == ["alice", "bob"]
    assert status["currentVersion"] == 2
    after = kapi.get_secret(namespace, "web") or {}
    remember_secret(after)
    assert json.loads(base64.b64decode(after["data"]["versions.json"]))["current"] == 2
    assert not {"previous", "next"} & set(after["data"]), sorted(after["data"])
    assert old_value not in after["data"].values()
    assert approvals_listed(kapi, namespace) == []

    events = events_of(kapi, namespace, "web")
    messages = [(e["type"], e["reason"], e["message"]) for e in events]
    accepted = [m for t, r, m in messages if r == "ApprovalAccepted"]
    assert len(accepted) == 2 and "alice" in accepted[0] and "bob" in accepted[1]
    rejected = [m for t, r, m in messages if r == "ApprovalRejected" and t == "Warning"]
    assert any("alice" in m and "Replayed" in m for m in rejected), rejected
    assert any("bob" in m and "WrongCode" in m for m in rejected), rejected
    revoked = [m for t, r, m in messages if r == "EmergencyRevoked"]
    assert revoked and "alice, bob" in revoked[0]

    # Metrics of the judge.
    assert (emergency_operator.metric("keyrotor_approvals_total", result="Accepted") or 0) >= 2
    assert (emergency_operator.metric("keyrotor_approvals_total", result="Replayed") or 0) >= 1
    assert (emergency_operator.metric("keyrotor_approvals_total", result="WrongCode") or 0) >= 1

    # No code or seed anywhere the operator writes.
    approver_state = ((kapi.get_secret(namespace, "keyrotor-approvers") or {})["metadata"]
                      ["annotations"][STATE_ANNOTATION])
    haystacks = {
        "events": json.dumps(events),
        "RotatingSecret (status, annotations)": json.dumps(
            kapi.get_rotating_secret(namespace, "web")),
        "approver state": approver_state,
        "operator log": emergency_operator.log_text(),
        "metrics": emergency_operator.metrics(),
        "CLI output": out + err + approved.stdout + replayed.stdout + refused.stdout,
    }
    for where, text in haystacks.items():
        for seed in seeds.values():
            assert seed not in text, f"a TOTP seed in {where}"
        for code in codes:
            assert not re.search(rf"(?<![0-9]){code}(?![0-9])", text), f"a code in {where}"
    assert Approvers(kapi, namespace=namespace).names() == ["alice", "bob"]


def approvals_listed(kapi: KubeApi, namespace: str) -> list[Any]:  # noqa: F811
    return list((kapi.request("GET", approvals_path(namespace)) or {}).get("items") or [])


def audit_lines(proc: OperatorProcess, action: str) -> list[dict[str, Any]]:
    """The operator's audit lines (on its stdout, in its log) of ``action``."""
    found = []
    for line in proc.log_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("kind") == KIND and \
                entry.get("action") == action:
            found.append(entry)
    return found


def test_stray_approvals_are_deleted_with_a_warning(control_plane: ControlPlane,
                                                    emergency_operator: OperatorProcess,
                                                    kapi: KubeApi,  # noqa: F811
                                                    namespace: str) -> None:
    """RotationApprovals made with kubectl while no request is open on their RotatingSecret
    (none annotated, another request id, a request that expired) are deleted within seconds,
    each with an ApprovalRejected Warning naming why and an approval.rejected audit line; the
    wrong codes in them never count toward bob's lockout (they were not checked)."""
    body = {"apiVersion": "keyrotor.io/v1alpha1", "kind": "RotatingSecret",
            "metadata": {"name": "db"},
            "spec": {"secretName": "db", "generator": {"random": {"length": 32}},
                     "rotation": {"every": "720h"},
                     "emergency": {"approvals": 1, "requestTTL": "3s"}}}
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))
    wait_status(kapi, namespace, "db", lambda s: s.get("currentVersion") == 1,
                what="version 1 issued")
    remember_secret(kapi.get_secret(namespace, "db"))
    approvers = Approvers(kapi, namespace=namespace)
    approvers.add("bob")
    bob = pyotp.TOTP(seed_of(kapi, namespace, "bob"))
    wrong = next(c for c in (f"{n:06d}" for n in range(300, 400))
                 if not bob.verify(c, valid_window=2))

    def stray(request: str, why: str) -> None:
        approval = approval_body(rotating_secret="db", request=request, approver="bob",
                                 code=wrong)
        created = control_plane.kubectl("create", "-n", namespace, "-o", "name", "-f", "-",
                                        input=yaml.safe_dump(approval))
        name = created.stdout.strip().rsplit("/", 1)[-1]
        wait_for(lambda: not any(a["metadata"]["name"] == name
                                 for a in approvals_listed(kapi, namespace)),
                 timeout=20, interval=0.1, what=f"RotationApproval {name} deleted ({why})")
        wait_for(lambda: [e for e in events_of(kapi, namespace, "db")
                          if (e["type"], e["reason"]) == ("Warning", "ApprovalRejected")
                          and f"rejected ({why})" in e["message"]],
                 timeout=10, interval=0.1, what=f"the ApprovalRejected Warning ({why})")

    # No request at all.
    stray("r-none", "NoRequest")
    # A request that expired (requestTTL 3s, nobody approved): the status kept its numbers.
    control_plane.kubectl("annotate", "-n", namespace, "rotatingsecret", "db",
                          "keyrotor.io/revoke-now=r1")
    status = wait_status(kapi, namespace, "db", lambda s: (s.get("emergency") or {})
                         .get("lastResult") == "Expired", what="request r1 expired")
    emergency = status["emergency"]
    assert emergency["request"] == "r1" and emergency["required"] == 1
    assert emergency.get("approvedBy") in (None, [])
    assert parse_ts(emergency["expiryTime"]) - parse_ts(emergency["startTime"]) == \
        datetime.timedelta(seconds=3)
    stray("r1", "RequestEnded")
    stray("r0", "OtherRequest")

    messages = [e["message"] for e in events_of(kapi, namespace, "db")
                if e["reason"] == "ApprovalRejected"]
    assert any("no emergency revocation request is open for db" in m for m in messages)
    assert any("request 'r1' expired" in m for m in messages)
    assert any("request 'r0' is unknown" in m for m in messages)
    rejected = wait_for(lambda: (lines if len(lines := audit_lines(
        emergency_operator, "approval.rejected")) >= 3 else None),
        timeout=10, interval=0.1, what="three approval.rejected audit lines")
    assert sorted(line["detail"]["reason"] for line in rejected) == [
        "NoRequest", "OtherRequest", "RequestEnded"]
    assert {line["actor"] for line in rejected} == {"approver:bob"}
    # The codes were never checked: no wrong code counted against bob.
    state = json.loads((kapi.get_secret(namespace, "keyrotor-approvers") or {})["metadata"]
                       ["annotations"][STATE_ANNOTATION])
    assert "bob" not in state, state
    assert (emergency_operator.metric("keyrotor_approvals_total", result="WrongCode") or 0) == 0
    for where, text in (("events", json.dumps(events_of(kapi, namespace, "db"))),
                        ("operator log", emergency_operator.log_text())):
        assert not re.search(rf"(?<![0-9]){wrong}(?![0-9])", text), f"a code in {where}"
