"""The audit chain head against the real control plane: the ConfigMap written with a
resourceVersion precondition (a stale writer re-reads and never moves the head back), two
writers racing, at most one write a second, where a restart continues, and the CLI end to
end (good, edited and truncated files, with --head-from-cluster)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kubernetes import client

from keyrotor.audit import GENESIS, Action, Head, HeadStore, line_hash, open_audit, verify
from keyrotor.kube import KubeApi
from keyrotor.testing.controlplane import ControlPlane
from keyrotor.testing.waiting import wait_for

ENTRY = {"action": Action.STAGED, "actor": "keyrotor", "namespace": "shop", "name": "api-key"}


def h(seq: int) -> Head:
    return Head(seq, f"{seq:064x}")


@pytest.fixture
def api(kube: client.ApiClient) -> KubeApi:
    return KubeApi(kube)


def stored(api: KubeApi, namespace: str, name: str = "keyrotor-audit-head") -> Head | None:
    return HeadStore(api, namespace, name).read()


def test_head_store_creates_then_patches(api: KubeApi, namespace: str) -> None:
    store = HeadStore(api, namespace)
    assert store.read() is None
    assert store.advance(h(3))
    assert store.advance(h(7))
    assert stored(api, namespace) == h(7)
    assert store.writes == 2 and store.conflicts == 0
    body = api.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/keyrotor-audit-head")
    assert body is not None and set(body["data"]) == {"seq", "hash", "time"}


def test_a_stale_writer_rereads_and_never_moves_the_head_back(api: KubeApi,
                                                              namespace: str) -> None:
    a, b = HeadStore(api, namespace), HeadStore(api, namespace)
    assert a.advance(h(1))
    assert b.read() == h(1)  # b caches this resourceVersion
    assert a.advance(h(2))
    assert b.advance(h(3))  # stale: 409, re-read (2 < 3), written
    assert b.conflicts == 1 and stored(api, namespace) == h(3)
    assert not a.advance(h(2)) or stored(api, namespace) == h(3)  # never backwards
    assert stored(api, namespace) == h(3)
    assert a.conflicts == 1
    # Having seen a head ahead, its next (still lower) head is not written blindly with the
    # resourceVersion it read (the race test found that lost update).
    assert not a.advance(h(1)) and stored(api, namespace) == h(3)


def test_two_writers_racing_lose_no_update(api: KubeApi, kube: client.ApiClient,
                                           namespace: str) -> None:
    """Two processes' worth of writers (each its own client) advance one head at once; the
    head ends at the highest sequence either wrote, whatever the interleaving."""
    stores = [HeadStore(KubeApi(kube), namespace), HeadStore(KubeApi(kube), namespace)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        barrier.wait()
        try:
            for seq in range(1 + index, 61, 2):  # one takes the odd, the other the even
                stores[index].advance(h(seq), attempts=30)  # a worst case: keep at it
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    # A read right after the race may come from the API server's watch cache: poll briefly.
    wait_for(lambda: stored(api, namespace) == h(60), timeout=5, what="head at seq 60")
    # Each store wrote unless the other was already ahead; every conflict was re-read.
    print(f"writes {[s.writes for s in stores]}, conflicts {[s.conflicts for s in stores]}")
    assert sum(s.writes for s in stores) <= 60


def test_the_head_is_written_at_most_once_a_second(api: KubeApi, namespace: str,
                                                   tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit = open_audit(file=str(path), stdout=False, api=api, namespace=namespace)
    store = audit.head_store
    assert store is not None
    started = time.monotonic()
    for _ in range(40):
        audit.record(**ENTRY)  # type: ignore[arg-type]
        time.sleep(0.05)  # a busy two seconds
    elapsed = time.monotonic() - started
    wait_for(lambda: stored(api, namespace) == audit.head, timeout=5, what="head caught up")
    assert 1 <= store.writes <= elapsed + 2, (store.writes, elapsed)
    writes = store.writes
    time.sleep(1.5)  # idle: nothing more
    assert store.writes == writes
    audit.close()
    head = stored(api, namespace)
    assert head is not None and head.seq == 40
    assert verify(path.read_bytes().splitlines(), head).ok


def test_a_file_behind_the_head_starts_a_flagged_segment(
        api: KubeApi, namespace: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "audit.log"
    audit = open_audit(file=str(path), stdout=False, api=api, namespace=namespace)
    for _ in range(5):
        audit.record(**ENTRY)  # type: ignore[arg-type]
    audit.close()
    original = path.read_bytes().splitlines()
    path.write_bytes(b"".join(line + b"\n" for line in original[:3]))  # cut off 4 and 5
    with caplog.at_level(logging.ERROR, logger="keyrotor.audit"):
        audit = open_audit(file=str(path), stdout=False, api=api, namespace=namespace)
    assert str(path) in caplog.text and f"ConfigMap {namespace}/keyrotor-audit-head" in \
        caplog.text and "seq 3" in caplog.text and "seq 5" in caplog.text
    audit.record(**ENTRY)  # type: ignore[arg-type]
    audit.close()
    lines = path.read_bytes().splitlines()
    marker = json.loads(lines[3])
    assert marker["action"] == "audit.break" and marker["seq"] == 6
    assert marker["prev"] == line_hash(original[4])  # it continues from the head
    assert marker["detail"]["head"]["seq"] == 5 and marker["detail"]["file"]["seq"] == 3
    head = stored(api, namespace)
    assert head is not None and head.seq == 7
    verdict = verify(lines, head)
    assert not verdict.ok and verdict.line == 4 and "breaks here" in verdict.message


def test_a_new_file_continues_from_the_head(api: KubeApi, namespace: str,
                                            tmp_path: Path) -> None:
    first = tmp_path / "pod-a" / "audit.log"
    audit = open_audit(file=str(first), stdout=False, api=api, namespace=namespace)
    audit.record(**ENTRY)  # type: ignore[arg-type]
    audit.record(**ENTRY)  # type: ignore[arg-type]
    audit.close()
    second = tmp_path / "pod-b" / "audit.log"  # a new pod's emptyDir
    audit = open_audit(file=str(second), stdout=False, api=api, namespace=namespace)
    audit.record(**ENTRY)  # type: ignore[arg-type]
    audit.close()
    lines = second.read_bytes().splitlines()
    docs = [json.loads(line) for line in lines]
    assert [d["action"] for d in docs] == ["audit.continued", "rotation.staged"]
    assert docs[0]["seq"] == 3 and docs[0]["prev"] == line_hash(
        first.read_bytes().splitlines()[-1])
    head = stored(api, namespace)
    assert head == Head(4, line_hash(lines[-1]))
    verdict = verify(lines, head)
    assert verdict.ok and verdict.message == "2 entries, chain intact (seq 3..4), head matches"


def test_stdout_only_continues_from_the_head(api: KubeApi, namespace: str,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    for _ in range(2):
        audit = open_audit(file=None, stdout=True, api=api, namespace=namespace)
        audit.record(**ENTRY)  # type: ignore[arg-type]
        audit.close()
    docs = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    assert [d["seq"] for d in docs] == [1, 2] and docs[0]["prev"] == GENESIS


def cli(plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keyrotor", "audit", "verify", *args,
                           "--kubeconfig", str(plane.kubeconfig)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_cli_verify_end_to_end(control_plane: ControlPlane, api: KubeApi, namespace: str,
                               tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit = open_audit(file=str(path), stdout=False, api=api, namespace=namespace,
                       configmap="audit-head")
    for i in range(6):
        audit.record(**ENTRY, versions={"next": i})  # type: ignore[arg-type]
    audit.close()
    from_cluster = ("--head-from-cluster", "--namespace", namespace, "--configmap",
                    "audit-head")

    good = cli(control_plane, str(path), *from_cluster)
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == f"{path}: 6 entries, chain intact (seq 1..6), head matches"

    lines = path.read_bytes().splitlines()
    edited = tmp_path / "edited.log"
    edited.write_bytes(b"\n".join([*lines[:2], lines[2].replace(b'"next":2', b'"next":9'),
                                   *lines[3:]]) + b"\n")
    result = cli(control_plane, str(edited), *from_cluster)
    assert result.returncode == 1
    assert "line 3: edited" in result.stdout, result.stdout

    truncated = tmp_path / "truncated.log"
    truncated.write_bytes(b"".join(line + b"\n" for line in lines[:4]))
    result = cli(control_plane, str(truncated), *from_cluster)
    assert result.returncode == 1
    assert "line 5: truncated: the file ends at seq 4 but the head is at seq 6" in \
        result.stdout, result.stdout
    assert cli(control_plane, str(truncated)).returncode == 0  # without a head: not seen

    head = stored(api, namespace, "audit-head")
    result = cli(control_plane, str(path), "--head", str(head))
    assert result.returncode == 0 and "head matches" in result.stdout

    deleted = tmp_path / "deleted.log"
    deleted.write_bytes(b"".join(line + b"\n" for line in lines[:1] + lines[2:]))
    result = cli(control_plane, str(deleted), "--head", str(head))
    assert result.returncode == 1 and "line 2: seq 3 after seq 1: 1 entry missing" in \
        result.stdout

    # From a pipe, e.g. the operator's stdout picked out of its logs.
    piped = subprocess.run([sys.executable, "-m", "keyrotor", "audit", "verify", "-", "--head",
                            str(head)], input=path.read_bytes(), capture_output=True,
                           timeout=60, check=False)
    assert piped.returncode == 0 and b"6 entries, chain intact" in piped.stdout

    missing = cli(control_plane, str(path), "--head-from-cluster", "--namespace", namespace,
                  "--configmap", "no-such-head")
    assert missing.returncode == 2 and "no head in ConfigMap" in missing.stderr
