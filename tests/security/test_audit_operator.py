"""The audit trail of a running operator: one line per step of a rotation, the manual
trigger's and the spec edit's field managers as actors, the file and stdout alike, and
``keyrotor audit verify --head-from-cluster`` passing; no Secret value in any line."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keyrotor.audit import KIND
from keyrotor.kube import KubeApi
from keyrotor.testing.controlplane import ControlPlane
from keyrotor.testing.democonsumer import Acceptor
from keyrotor.testing.waiting import wait_for
from tests.operator.conftest import (  # noqa: F401 - fixtures
    OperatorProcess,
    crds,
    kapi,
    remember_secret,
    rotating_secret,
    scanned_operator,
)
from tests.operator.helpers import await_status, condition, wait_status

STEPS = ["rotation.issued", "rotation.started", "rotation.staged", "rotation.accepted",
         "rotation.promoted", "rotation.retired", "rotation.revoked"]


@pytest.fixture
def audited_operator(control_plane: ControlPlane, crds: None, namespace: str,  # noqa: F811
                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                     ) -> Iterator[OperatorProcess]:
    # The operator's own namespace (the head's ConfigMap): here the test's.
    monkeypatch.setenv("POD_NAMESPACE", namespace)
    with scanned_operator(control_plane, namespace, tmp_path, extra_args=[
            "--audit-log", str(tmp_path / "audit" / "audit.log")]) as proc:
        yield proc


def lines_of(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def verify(plane: ControlPlane, path: Path, namespace: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keyrotor", "audit", "verify", str(path), "--head-from-cluster",
         "--namespace", namespace, "--kubeconfig", str(plane.kubeconfig)],
        capture_output=True, text=True, timeout=60, check=False)


async def test_a_rotation_on_record(control_plane: ControlPlane, kapi: KubeApi,  # noqa: F811
                                    namespace: str, audited_operator: OperatorProcess,
                                    tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.log"

    def read() -> dict[str, Any] | None:
        return kapi.get_secret(namespace, "audited")

    def kubectl(*args: str, stdin: str | None = None) -> Any:
        return asyncio.to_thread(control_plane.kubectl, *args, "-n", namespace, input=stdin)

    def until(check: Any, what: str) -> Any:
        return asyncio.to_thread(wait_for, check, timeout=60, what=what)

    # The acceptor answers the operator's probes on this event loop: nothing here blocks it.
    acceptor = Acceptor(read, lag=0.0)
    url = await acceptor.start()
    try:
        await kubectl("apply", "-f", "-", stdin=rotating_secret(
            "audited", rotation={"minOverlap": "1s", "maxOverlap": "1m"},
            verification={"interval": "300ms", "successesRequired": 1},
            generator={"random": {"length": 32}},
            consumers=[{"name": "api", "http": {"url": url, "headers": {
                "Authorization": "Bearer {{ candidate }}"}}}]))
        await await_status(kapi, namespace, "audited", lambda s: s.get("currentVersion") == 1)
        remember_secret(await asyncio.to_thread(read))
        await until(lambda: "current" in acceptor.slots_held, "acceptor has version 1")
        await kubectl("annotate", "rsec", "audited", "keyrotor.io/rotate=audit-test",
                      "--overwrite")
        await await_status(kapi, namespace, "audited", lambda s: s.get("rotationCount") == 1
                           and s.get("phase") == "Idle", what="one rotation")
        remember_secret(await asyncio.to_thread(read))
        await until(lambda: "rotation.revoked" in {e["action"] for e in lines_of(path)},
                    "the revocation on record")
        await kubectl("patch", "rsec", "audited", "--type=merge",
                      "-p", '{"spec":{"rotation":{"minOverlap":"2s"}}}')
        await until(lambda: "config.changed" in {e["action"] for e in lines_of(path)},
                    "the spec edit on record")
    finally:
        await acceptor.stop()
    audited_operator.stop()  # a clean stop writes the final head

    entries = lines_of(path)
    mine = [e for e in entries if e["name"] == "audited" and e["namespace"] == namespace]
    actions = [e["action"] for e in mine]
    print("\n".join(json.dumps(e, sort_keys=True) for e in mine))
    for step in STEPS:
        assert actions.count(step) == 1, (step, actions)
    assert actions.index("rotation.issued") < actions.index("trigger.manual") <= \
        actions.index("rotation.started") < actions.index("rotation.staged") < \
        actions.index("rotation.accepted") < actions.index("rotation.promoted") < \
        actions.index("rotation.retired") < actions.index("rotation.revoked")
    by_action = {e["action"]: e for e in mine}
    trigger = by_action["trigger.manual"]
    assert trigger["actor"] == "manager:kubectl-annotate"
    assert trigger["detail"]["trigger"] == "audit-test"
    assert by_action["config.changed"]["actor"] == "manager:kubectl-patch"
    assert by_action["rotation.staged"]["actor"] == "keyrotor"
    assert by_action["rotation.staged"]["versions"].get("next") == 2
    assert all(fp.startswith("hmac-sha256:") for e in mine
               for fp in e["fingerprints"].values()), "fingerprints only"
    assert any(e["fingerprints"] for e in mine)
    assert all(e["kind"] == KIND for e in entries)

    result = verify(control_plane, path, namespace)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "head matches" in result.stdout and "later" not in result.stdout

    # stdout carries the same lines, each whole, unmixed with the logs (stderr).
    raw_file = path.read_bytes().splitlines()
    stdout_lines = [line for line in audited_operator.log_path.read_bytes().splitlines()
                    if line.startswith(b"{") and f'"kind":"{KIND}"'.encode() in line]
    assert stdout_lines == raw_file

    # No material: neither any value the Secret held nor its base64 form.
    text = path.read_text()
    secret = read()
    assert secret is not None
    for value in (secret.get("data") or {}).values():
        assert value not in text
        with contextlib.suppress(UnicodeDecodeError):
            decoded = base64.b64decode(value).decode()
            assert len(decoded) < 12 or decoded not in text
    from tests.operator.conftest import SECRET_VALUES
    for value in SECRET_VALUES:
        assert len(value) < 12 or value not in text, "secret material in the audit file"


def test_no_audit_sink_no_action(control_plane: ControlPlane, crds: None,  # noqa: F811
                                 kapi: KubeApi, namespace: str, tmp_path: Path,  # noqa: F811
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail-closed: with stdout off and the file's directory unusable, the first version is
    not issued and Degraded says why; once the directory can be made, it is, on record."""
    monkeypatch.setenv("POD_NAMESPACE", namespace)
    blocker = tmp_path / "volume"
    blocker.write_text("a file where the audit directory should be\n")
    path = blocker / "audit.log"
    with scanned_operator(control_plane, namespace, tmp_path, extra_args=[
            "--audit-log", str(path), "--no-audit-stdout"]) as proc:
        control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=rotating_secret(
            "closed", generator={"random": {"length": 24}}))
        status = wait_status(kapi, namespace, "closed", lambda s: condition(
            s, "Degraded").get("reason") == "AuditUnavailable", what="Degraded")
        assert "no audit sink could be written" in condition(status, "Degraded")["message"]
        assert kapi.get_secret(namespace, "closed") is None  # nothing issued unrecorded
        blocker.unlink()  # the volume is back
        wait_status(kapi, namespace, "closed", lambda s: s.get("currentVersion") == 1,
                    timeout=90, what="version 1 once audited")
        remember_secret(kapi.get_secret(namespace, "closed"))
        proc.stop()
    actions = [e["action"] for e in lines_of(path) if e["name"] == "closed"]
    assert actions == ["rotation.issued"]
    assert not any(line.startswith(b"{") and f'"kind":"{KIND}"'.encode() in line
                   for line in proc.log_path.read_bytes().splitlines()), "stdout was off"
