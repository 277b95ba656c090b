"""The audit trail's chain, in process: any single edit, deletion, swap or truncation of a
chain of random entries is detected and the first bad line named; fail-closed sinks; no
material; idempotency keys; where a restarted process continues."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from keyrotor.audit import (
    GENESIS,
    KIND,
    Action,
    AuditLog,
    FileSink,
    Head,
    Sink,
    line_hash,
    open_audit,
    verify,
)
from keyrotor.errors import AuditUnavailable


class ListSink(Sink):
    """Lines in memory (a real Sink, the file's logic without the file)."""

    name = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[bytes] = []
        self.broken = False

    def _write(self, data: bytes) -> None:
        if self.broken:
            raise OSError(28, "No space left on device")
        self.lines.append(data.rstrip(b"\n"))


fingerprint = st.from_regex(r"\Ahmac-sha256:[0-9a-f]{16}\Z")
entries = st.fixed_dictionaries({
    "action": st.sampled_from([a for a in Action if not a.startswith("audit.")]),
    "actor": st.text(max_size=20),
    "namespace": st.from_regex(r"\A[a-z][a-z0-9-]{0,10}\Z"),
    "name": st.from_regex(r"\A[a-z][a-z0-9-]{0,10}\Z"),
    "uid": st.uuids().map(str),
    "versions": st.dictionaries(st.sampled_from(["current", "previous", "next"]),
                                st.integers(1, 10_000)),
    "fingerprints": st.dictionaries(st.from_regex(r"\Av[0-9]{1,4}\Z"), fingerprint,
                                    max_size=3),
    "detail": st.dictionaries(st.text(max_size=8), st.one_of(
        st.text(max_size=30), st.integers(), st.booleans(), st.none()), max_size=3),
})


def chain(items: list[dict[str, object]]) -> tuple[list[bytes], Head]:
    sink = ListSink()
    audit = AuditLog([sink])
    for item in items:
        audit.record(**item)  # type: ignore[arg-type]
    return sink.lines, audit.head


def test_a_chain_verifies_and_names_its_span() -> None:
    lines, head = chain([{"action": Action.ISSUED, "actor": "keyrotor", "namespace": "ns",
                          "name": "n"}] * 3)
    docs = [json.loads(line) for line in lines]
    assert [d["seq"] for d in docs] == [1, 2, 3]
    assert docs[0]["prev"] == GENESIS
    assert docs[1]["prev"] == line_hash(lines[0]) and docs[2]["prev"] == line_hash(lines[1])
    assert all(d["kind"] == KIND for d in docs)
    # Keys sorted, no spaces: the bytes are the canonical encoding.
    assert lines[0] == json.dumps(docs[0], sort_keys=True, separators=(",", ":")).encode()
    assert head == Head(3, line_hash(lines[2]))
    verdict = verify(lines, head)
    assert verdict.ok and verdict.message == "3 entries, chain intact (seq 1..3), head matches"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(entries, min_size=1, max_size=12), data=st.data())
def test_any_single_tampering_is_detected_at_its_line(items: list[dict[str, object]],
                                                      data: st.DataObject) -> None:
    lines, head = chain(items)
    assert verify(lines, head).ok
    n = len(lines)
    kind = data.draw(st.sampled_from(["edit", "delete", "swap", "truncate"]), label="kind")
    tampered = list(lines)
    if kind == "edit":
        k = data.draw(st.integers(0, n - 1), label="line")
        pos = data.draw(st.integers(0, len(lines[k]) - 1), label="byte")
        byte = data.draw(st.integers(32, 126), label="new byte")  # printable: no newline
        assume(lines[k][pos] != byte)
        tampered[k] = lines[k][:pos] + bytes([byte]) + lines[k][pos + 1:]
        expected = k + 1
    elif kind == "delete":
        k = data.draw(st.integers(0, n - 1), label="line")
        del tampered[k]
        expected = k + 1
    elif kind == "swap":
        assume(n >= 2)
        i = data.draw(st.integers(0, n - 2), label="first")
        j = data.draw(st.integers(i + 1, n - 1), label="second")
        tampered[i], tampered[j] = tampered[j], tampered[i]
        expected = i + 1
    else:
        keep = data.draw(st.integers(0, n - 1), label="kept")
        tampered = tampered[:keep]
        expected = keep + 1
    verdict = verify(tampered, head)
    assert not verdict.ok, (kind, verdict)
    assert verdict.line == expected, (kind, verdict.message)
    assert verdict.message.startswith(f"line {expected}: ")


def test_messages_say_what_happened() -> None:
    lines, head = chain([{"action": Action.STAGED, "actor": "keyrotor", "namespace": "ns",
                          "name": "n", "versions": {"next": i}} for i in range(5)])
    edited = list(lines)
    edited[1] = edited[1].replace(b'"next":1', b'"next":9')
    assert verify(edited, head).message == ("line 2: edited: its hash does not match the next "
                                            "line's prev")
    last = list(lines)
    last[4] = last[4].replace(b'"next":4', b'"next":9')
    assert verify(last, head).message == "line 5: edited: its hash does not match the head " \
                                         "(seq 5)"
    assert "no head given" in verify(last).message  # without a head: not detectable
    assert verify(lines[:2] + lines[3:], head).message == (
        "line 3: seq 4 after seq 2: 1 entry missing before this line (deleted or reordered)")
    swapped = [lines[0], lines[2], lines[1], lines[3], lines[4]]
    assert verify(swapped, head).line == 2
    assert verify(lines[:3], head).message == (
        "line 4: truncated: the file ends at seq 3 but the head is at seq 5 (2 entries missing "
        "at the end)")
    assert verify(lines[1:], head).message.startswith("line 1: the file starts at seq 2")
    assert verify([lines[0], b"{not json", *lines[2:]], head).message == (
        "line 2: not JSON (an edited or torn line)")
    # A head that lags (lines written within its window) still matches.
    lagging = verify(lines, Head(3, line_hash(lines[2])))
    assert lagging.ok and "head matches at seq 3; 2 later entries" in lagging.message


def test_no_material_in_a_line(caplog: pytest.LogCaptureFixture) -> None:
    sink = ListSink()
    audit = AuditLog([sink])
    material = "c2VjcmV0LXZhbHVlLXRoYXQtbXVzdC1uZXZlci1sZWFr"
    pem = "-----BEGIN PRIVATE KEY-----\nMIIE...\n-----END PRIVATE KEY-----"
    audit.record(action=Action.STAGED, actor="keyrotor", namespace="ns", name="n",
                 fingerprints={"v1": "hmac-sha256:0123456789abcdef", "v2": material,
                               "v3": "hmac-sha256:" + "ab" * 32},
                 detail={"note": pem, "long": "x" * 5000})
    doc = json.loads(sink.lines[0])
    assert doc["fingerprints"] == {"v1": "hmac-sha256:0123456789abcdef", "v2": "refused",
                                   "v3": "refused"}
    assert doc["detail"]["note"] == "refused"
    assert len(doc["detail"]["long"]) < 2100
    assert material not in sink.lines[0].decode() and "PRIVATE" not in sink.lines[0].decode()
    assert material not in caplog.text and "'v2'" in caplog.text
    # The decoy endpoint hands a list of fingerprints: kept, keyed by position.
    audit.record(action=Action.DECOY_PRESENTED, actor="c", namespace="ns", name="n",
                 fingerprints=["hmac-sha256:0123456789abcdef"])
    assert json.loads(sink.lines[1])["fingerprints"] == {"0": "hmac-sha256:0123456789abcdef"}


def test_idempotency_keys_are_remembered_but_bounded() -> None:
    sink = ListSink()
    audit = AuditLog([sink])
    entry = {"action": Action.STAGED, "actor": "keyrotor", "namespace": "ns", "name": "n"}
    audit.record(**entry, key="uid/rotation.staged/v7")  # type: ignore[arg-type]
    audit.record(**entry, key="uid/rotation.staged/v7")  # type: ignore[arg-type]
    assert len(sink.lines) == 1
    for i in range(10_000):
        audit.record(**entry, key=f"other-{i}")  # type: ignore[arg-type]
    audit.record(**entry, key="uid/rotation.staged/v7")  # type: ignore[arg-type]
    assert len(sink.lines) == 10_002  # forgotten after 10,000 newer keys
    assert verify(sink.lines, audit.head).ok


def test_concurrent_writers_make_one_chain() -> None:
    sink = ListSink()
    audit = AuditLog([sink])
    barrier = threading.Barrier(8)

    def write(worker: int) -> None:
        barrier.wait()
        for i in range(200):
            audit.record(action=Action.ACCEPTED, actor=f"w{worker}", namespace="ns",
                         name=f"n{i}")
    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    verdict = verify(sink.lines, audit.head)
    assert verdict.ok and verdict.entries == 1600, verdict.message


def test_fail_closed_when_no_sink_takes_the_line(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the log's directory should be\n")
    audit = open_audit(file=str(blocker / "audit.log"), stdout=False, api=None, namespace="ks")
    with pytest.raises(AuditUnavailable, match="no audit sink could be written"):
        audit.record(action=Action.STAGED, actor="keyrotor", namespace="ns", name="n")
    assert audit.head == Head(0, GENESIS)  # the sequence number was not used
    blocker.unlink()  # the volume is back
    audit.record(action=Action.STAGED, actor="keyrotor", namespace="ns", name="n")
    audit.close()
    lines = (blocker / "audit.log").read_bytes().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1]
    with pytest.raises(AuditUnavailable):
        audit.record(action=Action.STAGED, actor="keyrotor", namespace="ns", name="n")


def test_a_failed_sink_catches_up_without_a_gap() -> None:
    good, flaky = ListSink(), ListSink()
    audit = AuditLog([good, flaky])
    entry = {"action": Action.STAGED, "actor": "keyrotor", "namespace": "ns", "name": "n"}
    audit.record(**entry)  # type: ignore[arg-type]
    flaky.broken = True
    audit.record(**entry)  # type: ignore[arg-type]  # the other sink took it: no error
    audit.record(**entry)  # type: ignore[arg-type]
    assert len(flaky.lines) == 1
    good.broken = True
    with pytest.raises(AuditUnavailable, match="ENOSPC"):
        audit.record(**entry)  # type: ignore[arg-type]
    good.broken = flaky.broken = False
    audit.record(**entry)  # type: ignore[arg-type]
    assert flaky.lines == good.lines and len(good.lines) == 4
    assert verify(flaky.lines, audit.head).ok


def test_stdout_carries_whole_lines_only(capfd: pytest.CaptureFixture[str]) -> None:
    audit = open_audit(file=None, stdout=True, api=None, namespace="ks")
    print("someone else's text")  # buffered: flushed before the line, not inside it
    audit.record(action=Action.ISSUED, actor="keyrotor", namespace="ns", name="n")
    audit.close()
    out = capfd.readouterr().out.splitlines()
    assert out[0] == "someone else's text"
    assert json.loads(out[1])["kind"] == KIND


def test_a_restart_continues_the_file(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.log"
    entry = {"action": Action.STAGED, "actor": "keyrotor", "namespace": "ns", "name": "n"}
    for run in range(3):
        audit = open_audit(file=str(path), stdout=False, api=None, namespace="ks")
        audit.record(**entry, key="same-key")  # type: ignore[arg-type]
        audit.record(**entry, key=f"run-{run}")  # type: ignore[arg-type]
        audit.close()
    lines = path.read_bytes().splitlines()
    # The key written by the first run is remembered from the file by the next ones.
    assert [json.loads(line)["key"] for line in lines] == ["same-key", "run-0", "run-1",
                                                           "run-2"]
    assert verify(lines).ok
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_torn_last_line_starts_a_flagged_segment(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    entry = {"action": Action.STAGED, "actor": "keyrotor", "namespace": "ns", "name": "n"}
    audit = open_audit(file=str(path), stdout=False, api=None, namespace="ks")
    audit.record(**entry)  # type: ignore[arg-type]
    audit.record(**entry)  # type: ignore[arg-type]
    audit.close()
    with open(path, "ab") as f:
        f.write(b'{"action":"rotation.sta')  # a crash in the middle of a write
    audit = open_audit(file=str(path), stdout=False, api=None, namespace="ks")
    audit.record(**entry)  # type: ignore[arg-type]
    audit.close()
    lines = path.read_bytes().splitlines()
    assert len(lines) == 5
    assert json.loads(lines[3])["action"] == "audit.break"
    assert json.loads(lines[4])["prev"] == line_hash(lines[3])
    verdict = verify(lines)
    assert not verdict.ok and verdict.line == 3 and "not JSON" in verdict.message
    assert not verify(lines[:2] + lines[3:]).ok  # the break itself is flagged too


def test_file_sink_reopens_after_an_error(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "a" / "audit.log")
    assert sink.offer(b"one")
    sink.close()
    assert sink.offer(b"two")
    assert (tmp_path / "a" / "audit.log").read_bytes() == b"one\ntwo\n"
