"""The audit trail: one hash-chained JSON line per action, fail-closed.

Every rotation step, manual trigger, configuration change, approval, emergency revocation and
decoy hit becomes one line, written to every sink (stdout, and a file when ``--audit-log`` is
given) *before* the action is taken. A line looks like this (keys sorted, no spaces, ASCII)::

    {"action":"rotation.staged","actor":"keyrotor","detail":{...},"fingerprints":{"v7":
    "hmac-sha256:3f1c..."},"key":"<uid>/rotation.staged/v7","kind":"keyrotor.io/audit/v1",
    "name":"api-key","namespace":"shop","prev":"<64 hex>","seq":41,
    "time":"2026-12-03T04:41:42.123Z","uid":"...","versions":{"current":6,"next":7}}

Design, and what each choice costs:

* **Hash chain.** ``prev`` is the hex SHA-256 of the previous line's exact bytes (without its
  newline); the first line ever has 64 zeros; ``seq`` counts 1, 2, 3... Editing a line breaks
  the next line's ``prev``; deleting or reordering lines breaks ``seq``. The chain alone cannot
  show that the *last* lines were cut off, nor an edit of the last line: for that the chain
  head (``seq`` and hash of the last line) is also kept outside the log.
* **Chain head in a ConfigMap** (``keyrotor-audit-head`` in the operator's namespace; with
  ``--shard NAME`` ``keyrotor-audit-head-shard-NAME``), written with a ``resourceVersion``
  precondition: a second writer (a stale leader) gets a Conflict, re-reads, and never moves the
  head backwards (the head only grows; a head already ahead is logged as an error and left
  alone). It is *not* written once per line: a background thread writes at most one head a
  second (``head_interval``), after fsyncing the file, plus a final write on :meth:`close`.
  **The window**: lines written less than a second before a crash (or a lost API server) are
  not yet covered by the head, so cutting off exactly those lines is not detectable; a clean
  shutdown leaves no window. Idle, the operator writes nothing. A failed head write is
  retried with backoff and logged; it never blocks a rotation (the lines are in the sinks).
* **Fail-closed.** :meth:`AuditLog.record` returns only once at least one sink took the line;
  when none did it raises :class:`~keyrotor.errors.AuditUnavailable`, the sequence number is
  not used, and the caller does not take the action (the reconciler marks the object Degraded
  and retries, as Vault's audit devices block requests). A sink that failed while another
  took the line keeps it in a bounded backlog (10,000 lines) and writes it first when it
  works again, so a file that was full for a minute has no gap once space is back.
* **Idempotency.** ``key`` names an action once (``uid/rotation.staged/v7``): a key recorded
  among the last 10,000 is not written again, so a reconcile replayed after a Conflict does
  not duplicate its line. The keys are in the lines, and a restart reloads those of the
  file's last MiB.
* **No material.** ``fingerprints`` takes the keyed fingerprints the Secret annotations carry
  (``hmac-sha256:`` and 8-32 hex digits); anything else is replaced by ``"refused"`` and an
  error naming the key (never the value) is logged. Strings in ``detail`` that look like a PEM
  private key are refused the same way, and every string is cut at 2,048 characters.
* **Sinks.** stdout carries only audit lines (keyrotor's and kopf's logs go to stderr), each
  written with one call and flushed, and marked ``"kind":"keyrotor.io/audit/v1"`` so a log
  pipeline picks them out. The file is opened ``O_APPEND`` and written with one ``write`` per
  line (flushed to the kernel at once; fsynced before each head write, so the head never
  covers a line the disk may lose), its directory created if missing.

Where a new process continues the chain (``open_audit``):

* With a file, from the file's last line, if the head in the ConfigMap is not ahead of it (a
  head behind is normal: the window above) and, when the line the head names is in the
  file's last MiB, its hash is the head's.
* A file behind the head (truncated, restored from a backup, or another replica's emptyDir),
  one that diverges from the head, or one ending in a torn line: an error naming the file and
  the ConfigMap is logged and a new segment starts with an ``audit.break`` line continuing from
  the head (``seq`` head+1, ``prev`` the head's hash) whose ``detail`` records why. The file
  keeps everything it had; ``keyrotor audit verify`` flags the break (exit 1) until someone
  has looked and moved the file aside.
* A new (missing or empty) file while the head says lines exist (a new pod's emptyDir): the
  first line is ``audit.continued``, seq head+1, ``prev`` the head's hash: ``verify`` accepts a
  file that starts with it, and only with it, anywhere but at seq 1.
* stdout only: from the head, or from the start when there is none.

Several replicas: only the Lease holder writes. With one file per pod (emptyDir), a failover
starts a new segment in the new leader's file; a ReadWriteMany volume shared by the replicas
keeps one file. stdout, collected by the cluster's log pipeline, has every line either way.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import logging
import os
import random
import re
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keyrotor.errors import AuditUnavailable, KeyrotorError

if TYPE_CHECKING:
    from keyrotor.kube import KubeApi

log = logging.getLogger("keyrotor.audit")

KIND = "keyrotor.io/audit/v1"
GENESIS = "0" * 64
DEFAULT_CONFIGMAP = "keyrotor-audit-head"
REMEMBER = 10_000  # idempotency keys kept, and lines a failed sink keeps for later
TAIL = 1 << 20  # bytes of the file read at start (last line, head check, recent keys)
MAX_STRING = 2048
FINGERPRINT = re.compile(r"^[a-z0-9-]{1,24}:[0-9a-f]{8,32}$")
SLOT = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
HASH = re.compile(r"^[0-9a-f]{64}$")
REFUSED = "refused"


class Action(StrEnum):
    """The audit vocabulary, named once."""

    ISSUED = "rotation.issued"
    STARTED = "rotation.started"
    STAGED = "rotation.staged"
    ACCEPTED = "rotation.accepted"
    ACTIVATED = "rotation.activated"
    PROMOTED = "rotation.promoted"
    RETIRED = "rotation.retired"
    REVOKED = "rotation.revoked"
    MANUAL_TRIGGER = "trigger.manual"
    CONFIG_CHANGED = "config.changed"
    SECRET_REPAIRED = "secret.repaired"  # noqa: S105 - an action name
    APPROVAL_ACCEPTED = "approval.accepted"
    APPROVAL_REJECTED = "approval.rejected"
    APPROVER_LOCKED = "approver.locked"
    EMERGENCY_APPROVED = "emergency.approved"
    EMERGENCY_REVOKED = "emergency.revoked"
    EMERGENCY_EXPIRED = "emergency.expired"
    EMERGENCY_REJECTED = "emergency.rejected"
    DECOY_PRESENTED = "decoy.presented"
    # The trail's own: a new file continuing the chain, and a break verify must flag.
    CONTINUED = "audit.continued"
    BREAK = "audit.break"


def line_hash(line: bytes) -> str:
    """The hash the next line's ``prev`` carries: SHA-256 of the exact bytes, no newline."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


# ---- sinks ---------------------------------------------------------------------------------

class Sink:
    """Where lines go. ``offer`` writes the backlog then the line; False: not written (kept in
    the backlog, unless :meth:`retract` takes it back because no sink took it)."""

    name = "sink"

    def __init__(self) -> None:
        self.backlog: deque[bytes] = deque()
        self.dropped = 0
        self.error: str | None = None

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def offer(self, line: bytes) -> bool:
        if len(self.backlog) >= REMEMBER:
            self.backlog.popleft()
            self.dropped += 1
            log.error("audit sink %s: backlog full, the oldest unwritten line is dropped "
                      "(%d so far): this sink will show a gap", self.name, self.dropped)
        self.backlog.append(line)
        try:
            while self.backlog:
                self._write(self.backlog[0] + b"\n")
                self.backlog.popleft()
        except Exception as exc:  # any failure is this sink's failure
            if self.error is None:
                log.error("audit sink %s cannot be written: %s", self.name, _describe(exc))
            self.error = _describe(exc)
            return False
        if self.error is not None:
            log.warning("audit sink %s is written again", self.name)
            self.error = None
        return True

    def retract(self, line: bytes) -> None:
        if self.backlog and self.backlog[-1] is line:
            self.backlog.pop()

    def sync(self) -> None:
        """Make what was written durable (the file: fsync)."""

    def close(self) -> None:
        """Release what the sink holds."""


class StdoutSink(Sink):
    """Standard output: audit lines only (logs go to stderr). One write per line, flushed."""

    name = "stdout"

    def _write(self, data: bytes) -> None:
        out = sys.stdout
        out.flush()  # text someone printed goes first, never into the middle of a line
        buffer = getattr(out, "buffer", None)
        if buffer is not None:
            buffer.write(data)
            buffer.flush()
        else:  # a replaced sys.stdout (pytest's capture): text only
            out.write(data.decode("ascii"))
            out.flush()


class FileSink(Sink):
    """An append-only file (``O_APPEND``, mode 0600), its directory created; opened again at
    the next line after an error, so a volume that comes back is used again."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self.name = f"file {self.path}"
        self.fd: int | None = None

    def _open(self) -> int:
        if self.fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                              0o600)
        return self.fd

    def _write(self, data: bytes) -> None:
        try:
            fd = self._open()
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except OSError:
            self.close()  # reopen next time: the file may have been replaced or remounted
            raise

    def sync(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}{where}"
    return f"{type(exc).__name__}: {exc}"


# ---- the chain head in a ConfigMap -----------------------------------------------------------

@dataclass(frozen=True)
class Head:
    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> Head:
        """``SEQ:HASH`` (the form ``keyrotor audit verify --head`` takes)."""
        seq, _, digest = text.strip().partition(":")
        if not seq.isdigit() or not HASH.match(digest):
            raise ValueError(f"expected SEQ:HASH (a number, a colon, 64 hex digits), got "
                             f"{text!r}")
        return cls(int(seq), digest)


class HeadStore:
    """The chain head in a ConfigMap, written with a ``resourceVersion`` precondition. Only
    moves forward: a Conflict re-reads, and a head found ahead is left alone. Blocking;
    one caller at a time (the :class:`AuditLog`'s head thread)."""

    def __init__(self, api: KubeApi, namespace: str, name: str = DEFAULT_CONFIGMAP) -> None:
        self.api, self.namespace, self.name = api, namespace, name
        self.resource_version: str | None = None
        self.writes = 0  # successful writes (tests and the API-write budget count them)
        self.conflicts = 0

    @property
    def where(self) -> str:
        return f"ConfigMap {self.namespace}/{self.name}"

    @property
    def _path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/configmaps"

    def read(self) -> Head | None:
        """The stored head, or None when there is no ConfigMap yet."""
        body = self.api.request("GET", f"{self._path}/{self.name}", verb="get",
                                resource="configmaps", namespace=self.namespace)
        if body is None:
            self.resource_version = None
            return None
        self.resource_version = (body.get("metadata") or {}).get("resourceVersion")
        data = body.get("data") or {}
        try:
            return Head(int(data.get("seq", "0")), str(data.get("hash", GENESIS)))
        except ValueError:
            log.error("audit head %s is not a number: %r; treated as empty", self.where,
                      data.get("seq"))
            return Head(0, GENESIS)

    def advance(self, head: Head, *, attempts: int = 10) -> bool:
        """Store ``head`` unless the stored one is at or past it. True: stored (or already
        there); False: another writer is ahead (logged). Raises KeyrotorError (API away,
        permission denied)."""
        for attempt in range(attempts):
            stored = self.read() if self.resource_version is None else None
            if stored is None and self.resource_version is None:
                if self._create(head):
                    return True
                continue  # created meanwhile by someone else: read it
            if stored is not None:
                if stored == head:
                    return True
                if stored.seq >= head.seq:
                    log.error("audit head in %s is at seq %d, this process is at seq %d: "
                              "another writer (a second leader?) wrote the chain further; "
                              "the head is left alone", self.where, stored.seq, head.seq)
                    # Read again next time: a cached resourceVersion would let the next,
                    # still lower, head overwrite this one without a look.
                    self.resource_version = None
                    return False
            data = {"seq": str(head.seq), "hash": head.hash, "time": _now()}
            try:
                body = self.api.request(
                    "PATCH", f"{self._path}/{self.name}",
                    body={"metadata": {"resourceVersion": self.resource_version},
                          "data": data},
                    content_type="application/merge-patch+json", verb="patch",
                    resource="configmaps", namespace=self.namespace)
            except KeyrotorError as exc:
                if exc.reason != "Conflict":
                    raise
                self.conflicts += 1
                self.resource_version = None  # re-read, then decide again
                # Growing jitter: two racing writers drift apart instead of colliding again.
                time.sleep(random.uniform(0.0, 0.02 * (attempt + 1)))  # noqa: S311
                continue
            if body is None:  # deleted meanwhile
                self.resource_version = None
                continue
            self.resource_version = (body.get("metadata") or {}).get("resourceVersion")
            self.writes += 1
            return True
        raise AuditUnavailable(f"audit head in {self.where}: still conflicting after "
                               f"{attempts} attempts")

    def _create(self, head: Head) -> bool:
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": self.name, "namespace": self.namespace, "labels": {
                    "app.kubernetes.io/name": "keyrotor",
                    "app.kubernetes.io/component": "audit-head"}},
                "data": {"seq": str(head.seq), "hash": head.hash, "time": _now()}}
        try:
            answer = self.api.request("POST", self._path, body=body, verb="create",
                                      resource="configmaps", namespace=self.namespace)
        except KeyrotorError as exc:
            if exc.reason != "Conflict":  # 409 AlreadyExists: someone was first
                raise
            self.conflicts += 1
            return False
        if answer is None:
            raise AuditUnavailable(f"audit head: namespace {self.namespace} does not exist "
                                   f"(set --audit-head-configmap or $POD_NAMESPACE)")
        self.resource_version = (answer.get("metadata") or {}).get("resourceVersion")
        self.writes += 1
        return True


# ---- the log -----------------------------------------------------------------------------------

class AuditLog:
    """The audit trail. :meth:`record` is blocking and thread-safe."""

    def __init__(self, sinks: Sequence[Sink], *, head_store: HeadStore | None = None,
                 start: Head = Head(0, GENESIS), stored: int | None = None,
                 keys: Iterable[str] = (), head_interval: float = 1.0,
                 clock: Callable[[], str] = _now) -> None:
        self.sinks = list(sinks)
        self.head_store = head_store
        self.head_interval = head_interval
        self.clock = clock
        self.seq, self.prev = start.seq, start.hash
        self._keys: OrderedDict[str, None] = OrderedDict((k, None) for k in keys)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        # The head the store holds, as far as this process knows.
        self._stored_seq = start.seq if stored is None else stored
        self._head_error: str | None = None
        self._closing = False
        self._closed = False
        self.preamble: dict[str, Any] | None = None  # a first line still to write
        self._thread: threading.Thread | None = None
        if head_store is not None:
            self._thread = threading.Thread(target=self._head_loop, daemon=True,
                                            name="keyrotor-audit-head")
            self._thread.start()

    @property
    def head(self) -> Head:
        with self._lock:
            return Head(self.seq, self.prev)

    def record(self, *, action: Action | str, actor: str, namespace: str, name: str,
               uid: str = "", versions: Mapping[str, int] | None = None,
               fingerprints: Mapping[str, str] | Sequence[str] | None = None,
               detail: Mapping[str, Any] | None = None, key: str | None = None) -> None:
        """Write one line to every sink; raises AuditUnavailable when none took it (then the
        caller does not take the action). A ``key`` recorded recently is not written again."""
        if str(action).startswith("audit."):
            raise ValueError(f"{action}: the audit.* actions are the trail's own")
        entry: dict[str, Any] = {
            "action": str(action), "actor": str(actor), "namespace": str(namespace),
            "name": str(name), "uid": str(uid or ""),
            "versions": {str(k): int(v) for k, v in (versions or {}).items()},
            "fingerprints": _fingerprints(fingerprints),
            "detail": _clean(dict(detail or {})), "key": key}
        with self._lock:
            if self._closed:
                raise AuditUnavailable("the audit log is closed")
            if key is not None and key in self._keys:
                self._keys.move_to_end(key)
                return
            if self.preamble is not None:
                self._write(self.preamble)
                self.preamble = None
            self._write(entry)
            if key is not None:
                self._keys[key] = None
                while len(self._keys) > REMEMBER:
                    self._keys.popitem(last=False)
            self._cond.notify_all()

    def write_preamble(self) -> None:
        """Write the pending first line now (AuditUnavailable: it stays pending)."""
        with self._lock:
            if self.preamble is not None:
                self._write(self.preamble)
                self.preamble = None
            self._cond.notify_all()

    def _write(self, entry: dict[str, Any]) -> None:
        """Chain and write one entry (lock held). Raises AuditUnavailable: nothing used."""
        line = encode({**entry, "kind": KIND, "seq": self.seq + 1, "prev": self.prev,
                       "time": self.clock()})
        taken = [sink.offer(line) for sink in self.sinks]
        if not any(taken):
            for sink in self.sinks:
                sink.retract(line)
            why = "; ".join(f"{s.name}: {s.error}" for s in self.sinks) or "no sink configured"
            raise AuditUnavailable(f"no audit sink could be written ({why}): the action is "
                                   f"not taken until one can")
        self.seq, self.prev = self.seq + 1, line_hash(line)

    # ---- head ------------------------------------------------------------------------------

    def _head_loop(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self._closing and self.seq == self._stored_seq:
                    self._cond.wait()
                if self._closing:
                    return
            started = time.monotonic()
            if self.flush_head():
                failures = 0
                pause = self.head_interval
            else:
                failures += 1
                pause = min(self.head_interval * 2 ** failures, 30.0)
            # At most one write per interval: lines meanwhile are covered by the next one.
            with self._cond:
                self._cond.wait_for(lambda: self._closing,
                                    timeout=max(0.0, started + pause - time.monotonic()))

    def flush_head(self) -> bool:
        """fsync the sinks and store the current head. True when stored (or nothing to do)."""
        store = self.head_store
        if store is None:
            return True
        with self._lock:
            head = Head(self.seq, self.prev)
            for sink in self.sinks:
                sink.sync()
        if head.seq <= self._stored_seq:
            return True
        try:
            store.advance(head)
        except KeyrotorError as exc:
            if str(exc) != self._head_error:  # once per kind of failure, not every retry
                log.error("audit head not written to %s (retried with backoff; lines written "
                          "meanwhile are not yet covered by a head): %s", store.where, exc)
            self._head_error = str(exc)
            return False
        if self._head_error is not None:
            log.warning("audit head written to %s again (seq %d)", store.where, head.seq)
            self._head_error = None
        self._stored_seq = head.seq  # or someone is ahead: retrying would not help
        return True

    def close(self) -> None:
        """Stop taking lines, write the final head, release the sinks."""
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=15)
        self.flush_head()  # once: a stop must not wait on an API server that is away
        with self._lock:
            self._closed = True
            for sink in self.sinks:
                sink.close()


def encode(entry: Mapping[str, Any]) -> bytes:
    """One line's bytes: keys sorted, no spaces, ASCII only (so the bytes are stable)."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      default=str).encode("ascii")


def _fingerprints(given: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    """Keyed fingerprints only: anything else is refused (replaced, and logged by key)."""
    if given is None:
        return {}
    items = (given.items() if isinstance(given, Mapping)
             else ((str(i), v) for i, v in enumerate(given)))
    out: dict[str, str] = {}
    for key, value in items:
        key = str(key) if SLOT.match(str(key)) else REFUSED
        if isinstance(value, str) and FINGERPRINT.match(value):
            out[key] = value
        else:
            log.error("audit: the fingerprint for %r does not look like a keyed fingerprint "
                      "(algorithm:hex); refused, not written", key)
            out[key] = REFUSED
    return out


def _clean(value: Any, depth: int = 0) -> Any:
    """``detail`` made JSON: strings cut at 2,048 characters, private keys refused."""
    if depth > 8:
        return REFUSED
    if isinstance(value, Mapping):
        return {str(k): _clean(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_clean(v, depth + 1) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = str(value)
    if "PRIVATE KEY" in text:
        log.error("audit: a detail looked like a private key; refused, not written")
        return REFUSED
    return text if len(text) <= MAX_STRING else text[:MAX_STRING] + "...(cut)"


# ---- opening: where the chain continues --------------------------------------------------------

@dataclass
class FileTail:
    """What the end of an audit file says."""

    last: Head | None = None  # the last valid line
    entries: dict[int, str] | None = None  # seq -> hash of the lines in the tail
    keys: tuple[str, ...] = ()
    torn: bool = False  # the file ends in something that is not an audit line
    unterminated: bool = False  # ... or without a newline

    @classmethod
    def read(cls, path: Path) -> FileTail:
        try:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - TAIL))
                data = f.read()
        except FileNotFoundError:
            return cls(entries={})
        except OSError as exc:  # the sink reports it too, at its first line
            log.error("audit file %s cannot be read: %s", path, _describe(exc))
            return cls(entries={})
        lines = data.split(b"\n")
        if size > TAIL:
            lines = lines[1:]  # the first may be the end of a longer line
        # A file not ending in a newline: the last write was cut short (or lost its newline).
        unterminated = data != b"" and not data.endswith(b"\n")
        entries: dict[int, str] = {}
        keys: list[str] = []
        last: Head | None = None
        torn = False
        for i, raw in enumerate(lines):
            if not raw:
                continue
            doc = _audit_line(raw)
            if doc is None:
                torn = i == len(lines) - 1  # garbage mid-file is verify's business
                continue
            last = Head(doc["seq"], line_hash(raw))
            entries[last.seq] = last.hash
            if isinstance(doc.get("key"), str):
                keys.append(doc["key"])
        return cls(last=last, entries=entries, keys=tuple(keys[-REMEMBER:]), torn=torn,
                   unterminated=unterminated)


def _audit_line(raw: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("kind") != KIND or not isinstance(
            doc.get("seq"), int):
        return None
    return doc


def operator_namespace() -> str:
    """The operator's own namespace: $POD_NAMESPACE, else keyrotor-system."""
    return os.environ.get("POD_NAMESPACE") or "keyrotor-system"


def open_audit(*, file: str | None, stdout: bool, api: KubeApi | None, namespace: str,
               configmap: str = DEFAULT_CONFIGMAP, head_interval: float = 1.0) -> AuditLog:
    """The operator's audit trail: sinks, the head store (``api`` None or ``configmap`` empty:
    none), and where the chain continues (see the module's documentation). Blocking."""
    sinks: list[Sink] = []
    if stdout:
        sinks.append(StdoutSink())
    file_sink = FileSink(file) if file else None
    if file_sink is not None:
        sinks.append(file_sink)
    if not sinks:
        raise ValueError("an audit trail needs a sink: stdout or a file")
    store = HeadStore(api, namespace, configmap) if api is not None and configmap else None
    head: Head | None = None
    if store is not None:
        try:
            head = store.read()
        except KeyrotorError as exc:
            log.error("audit head in %s cannot be read (%s): the chain continues from the "
                      "file without checking it against the head", store.where, exc)
    tail = FileTail.read(file_sink.path) if file_sink is not None else FileTail()
    if file_sink is not None and tail.unterminated:  # end the partial line first
        with contextlib.suppress(OSError):
            file_sink._write(b"\n")
    start, preamble = _continue(tail, head, file_sink, store)
    audit = AuditLog(sinks, head_store=store, start=start, keys=tail.keys,
                     stored=head.seq if head is not None else None,
                     head_interval=head_interval)
    if preamble is not None:
        audit.preamble = {"actor": "keyrotor", "namespace": namespace, "name": configmap or "",
                          "uid": "", "versions": {}, "fingerprints": {}, "key": None,
                          **preamble}
        with contextlib.suppress(AuditUnavailable):  # else: written before the next line
            audit.write_preamble()
    return audit


def _continue(tail: FileTail, head: Head | None, file_sink: FileSink | None,
              store: HeadStore | None) -> tuple[Head, dict[str, Any] | None]:
    """(the head to chain from, a first line to write or None)."""
    where = store.where if store is not None else "no head store"
    head_detail = {"seq": head.seq, "hash": head.hash} if head is not None else None
    if file_sink is None:
        return (head or Head(0, GENESIS)), None
    last = tail.last
    if last is None:
        if tail.torn:
            return _break(f"{file_sink.path} holds no whole audit line", head, tail, where,
                          file_sink)
        if head is None or head.seq == 0:
            return Head(0, GENESIS), None
        log.info("audit: %s is new; it continues the chain at seq %d (head in %s)",
                 file_sink.path, head.seq + 1, where)
        return head, {"action": Action.CONTINUED,
                      "detail": {"reason": "new file", "head": head_detail}}
    if head is None and store is not None:
        log.warning("audit: %s has lines up to seq %d but %s holds no head: was it "
                    "deleted? It is written anew", file_sink.path, last.seq, where)
    if head is not None and head.seq > last.seq:
        return _break(f"{file_sink.path} ends at seq {last.seq} but the head in {where} is "
                      f"at seq {head.seq}: lines are missing from the file", head, tail,
                      where, file_sink)
    if head is not None and head.seq > 0 and head.seq in (tail.entries or {}) and \
            (tail.entries or {})[head.seq] != head.hash:
        return _break(f"line seq {head.seq} of {file_sink.path} does not match the head in "
                      f"{where}: the file was edited or belongs to another chain", head,
                      tail, where, file_sink)
    if tail.torn:
        return _break(f"{file_sink.path} ends in a partial line after seq {last.seq}",
                      head, tail, where, file_sink)
    return last, None


def _break(reason: str, head: Head | None, tail: FileTail, where: str,
           file_sink: FileSink) -> tuple[Head, dict[str, Any]]:
    log.error("audit: %s; a new segment starts with an audit.break line (keyrotor audit "
              "verify flags it; move the file aside once looked at)", reason)
    last = tail.last or Head(0, GENESIS)
    start = head if head is not None and head.seq >= last.seq else last
    detail = {"reason": reason,
              "file": {"seq": last.seq, "hash": last.hash} if tail.last else None,
              "head": {"seq": head.seq, "hash": head.hash} if head is not None else None}
    return start, {"action": Action.BREAK, "detail": detail}


# ---- verify -------------------------------------------------------------------------------------

@dataclass
class Verdict:
    ok: bool
    message: str
    line: int | None = None  # the first bad line (1-based), when not ok
    entries: int = 0
    first: int | None = None
    last: int | None = None


def verify(lines: Iterable[bytes], head: Head | None = None) -> Verdict:
    """Check a file's chain (and, with ``head``, its end); name the first bad line. Memory
    does not grow with the file."""
    entries, number = 0, 0
    first: int | None = None
    prev_seq, prev_hash, prev_line = 0, GENESIS, 0
    at_head: tuple[int, str] | None = None  # (line number, hash) of the line at head.seq

    def bad(line: int, why: str) -> Verdict:
        return Verdict(False, f"line {line}: {why}", line, entries, first, prev_seq or None)

    stream = iter(lines)
    following: list[bytes] = []  # one line read ahead, when needed

    def ahead() -> bytes | None:
        if not following:
            upcoming = next(stream, None)
            if upcoming is not None:
                following.append(upcoming)
        return following[0] if following else None

    def unread() -> Iterator[bytes]:
        while True:
            raw = following.pop() if following else next(stream, None)
            if raw is None:
                return
            yield raw

    for number, raw in enumerate(unread(), start=1):
        raw = raw.rstrip(b"\n")
        try:
            doc = json.loads(raw)
        except ValueError:
            return bad(number, "not JSON (an edited or torn line)")
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            return bad(number, f"not an audit line (no \"kind\":\"{KIND}\")")
        seq, prev = doc.get("seq"), doc.get("prev")
        if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(prev, str):
            return bad(number, "seq or prev missing (an edited line)")
        if doc.get("action") == Action.BREAK:
            detail = doc.get("detail")
            reason = detail.get("reason", "") if isinstance(detail, dict) else ""
            return bad(number, f"the chain breaks here (recorded when the operator started): "
                               f"{reason}")
        if number == 1:
            continued = doc.get("action") == Action.CONTINUED and seq > 1
            if not (seq == 1 and prev == GENESIS) and not continued:
                return bad(number, f"the file starts at seq {seq} without a predecessor: "
                                   f"the lines before it were deleted")
        elif seq != prev_seq + 1:
            if seq <= prev_seq:
                return bad(number, f"seq {seq} after seq {prev_seq}: lines reordered or "
                                   f"duplicated")
            missing = seq - prev_seq - 1
            return bad(number, f"seq {seq} after seq {prev_seq}: {missing} "
                               f"{'entry' if missing == 1 else 'entries'} missing before this "
                               f"line (deleted or reordered)")
        elif prev != prev_hash:
            # Line k's hash is not line k+1's prev: line k was edited, or line k+1's prev
            # was. The line after tells which: it chains to line k+1 only if k+1 is intact.
            mine = line_hash(raw)
            upcoming = ahead()
            if upcoming is not None:
                doc_after = _audit_line(upcoming.rstrip(b"\n"))
                own = doc_after is not None and doc_after.get("prev") != mine
            else:
                own = head is not None and head.seq == seq and head.hash != mine
            if own:
                return bad(number, "edited: its prev does not match the previous line's hash")
            return bad(prev_line, "edited: its hash does not match the next line's prev")
        entries += 1
        first = seq if first is None else first
        prev_seq, prev_hash, prev_line = seq, line_hash(raw), number
        if head is not None and seq == head.seq:
            at_head = (number, prev_hash)
    span = f"seq {first}..{prev_seq}"
    if head is None:
        if entries == 0:
            return Verdict(True, "0 entries (no head given: a truncation is not detectable)")
        return Verdict(True, f"{entries} entries, chain intact ({span}); no head given: a "
                             f"truncation or an edit of the last line is not detectable",
                       None, entries, first, prev_seq)
    if prev_seq < head.seq:
        return Verdict(False, f"line {number + 1}: truncated: the file ends at seq {prev_seq} "
                              f"but the head is at seq {head.seq} ({head.seq - prev_seq} "
                              f"{'entry' if head.seq - prev_seq == 1 else 'entries'} missing "
                              f"at the end)", number + 1, entries, first, prev_seq or None)
    if at_head is None:
        return Verdict(True, f"{entries} entries, chain intact ({span}); the head (seq "
                             f"{head.seq}) is before this file's first line, not checked",
                       None, entries, first, prev_seq)
    line, digest = at_head
    if digest != head.hash:
        return Verdict(False, f"line {line}: edited: its hash does not match the head (seq "
                              f"{head.seq})", line, entries, first, prev_seq)
    after = prev_seq - head.seq
    lag = "" if after == 0 else (
        f" at seq {head.seq}; {after} later {'entry' if after == 1 else 'entries'} not yet "
        f"covered by a head (written within its one-second window, or the operator stopped "
        f"without writing it)")
    return Verdict(True, f"{entries} entries, chain intact ({span}), head matches{lag}",
                   None, entries, first, prev_seq)
