"""What every fault test watches: the Secret (polled, independently of the operator and of the
watch-based :class:`tests.operator.helpers.SecretWitness`) and real traffic through it.

* :class:`SecretPoller` reads the Secret every 100 ms with a short client timeout and checks,
  on every read that succeeds: never empty once issued, ``current``'s version only goes up, a
  version always has one value and a value one version, at most two slots are filled, and a
  revoked version (or its value) never comes back. Reads that fail (the API server away) are
  counted, not judged: a pod's kubelet keeps the last mounted copy then, and so do the mounts.
* :class:`Traffic` is a presenter and an acceptor built on :mod:`keyrotor.client` (the
  processes of :mod:`keyrotor.testing.consumerapp`), each reading its own kubelet-style mount
  of the Secret, plus a ``presenters`` check the operator probes before revoking: it answers
  200 only when the presenter's library has loaded the candidate version as current. The
  presenter's tally of failed requests is the test's measure of downtime.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubernetes import client

from keyrotor.testing.controlplane import free_port
from keyrotor.testing.processes import spawn, stop
from keyrotor.testing.secretmount import SecretMirror
from keyrotor.testing.waiting import wait_for
from tests.operator.conftest import remember_secret
from tests.operator.helpers import answers

SLOTS = ("current", "next", "previous")


@dataclass
class SecretPoller:
    """Polls one Secret every ``interval`` seconds in a thread; see the module docstring."""

    api: client.ApiClient
    namespace: str
    name: str
    interval: float = 0.1
    timeout: float = 1.0
    values: dict[int, bytes] = field(default_factory=dict)
    currents: list[int] = field(default_factory=list)
    revoked: set[int] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    # (monotonic time, slot -> version) each time the slots changed
    changes: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    polls: int = 0
    errors: int = 0
    longest_gap: float = 0.0  # longest time without a successful read
    _slots: dict[str, int] = field(default_factory=dict)
    _last_ok: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _read(self) -> dict[str, Any] | None:
        core = client.CoreV1Api(self.api)
        try:
            raw = core.read_namespaced_secret(self.name, self.namespace,
                                              _preload_content=False,
                                              _request_timeout=self.timeout)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        secret: dict[str, Any] = json.loads(raw.data)
        return secret

    def see(self, secret: dict[str, Any] | None) -> None:
        if secret is None:
            if self.currents:
                self.problems.append("the Secret disappeared")
            return
        remember_secret(secret)
        data = secret.get("data") or {}
        annotations = secret["metadata"].get("annotations") or {}
        slots: dict[str, int] = {}
        for slot in SLOTS:
            version = annotations.get(f"keyrotor.io/{slot}-version")
            if slot in data and version is not None:
                slots[slot] = int(version)
                value = base64.b64decode(data[slot])
                known = self.values.setdefault(int(version), value)
                if known != value:
                    self.problems.append(f"version {version} had two different values")
                owners = [v for v, held in self.values.items() if held == value]
                if len(owners) > 1:
                    self.problems.append(f"one value under versions {owners}")
                if int(version) in self.revoked:
                    self.problems.append(f"revoked version {version} came back in {slot}")
        if len(slots) > 2:
            self.problems.append(f"{len(slots)} slots filled at once: {slots}")
        current = slots.get("current")
        if current is None:
            if self.currents:
                self.problems.append(f"no current version (slots {slots})")
        else:
            if self.currents and current < self.currents[-1]:
                self.problems.append(f"current went back from {self.currents[-1]} to {current}")
            if not self.currents or self.currents[-1] != current:
                self.currents.append(current)
        if slots != self._slots:
            gone = set(self._slots.values()) - set(slots.values())
            self.revoked |= gone
            self._slots = slots
            self.changes.append((time.monotonic(), dict(slots)))

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                secret = self._read()
            except Exception:  # the API server away or slow: counted, not judged
                self.errors += 1
            else:
                self.polls += 1
                self.longest_gap = max(self.longest_gap, started - self._last_ok)
                self._last_ok = started
                self.see(secret)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def start(self) -> SecretPoller:
        self._last_ok = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"poller-{self.name}")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)

    def revoked_at(self, version: int) -> float | None:
        """When the poller first saw ``version`` gone from every slot after holding it."""
        seen = False
        for when, slots in self.changes:
            if version in slots.values():
                seen = True
            elif seen:
                return when
        return None

    def first_seen(self, version: int, slot: str) -> float | None:
        return next((when for when, slots in self.changes if slots.get(slot) == version), None)

    def summary(self) -> str:
        return (f"poller: {self.polls} reads, {self.errors} failed reads, longest gap "
                f"{self.longest_gap:.1f}s, currents {self.currents}, problems {self.problems}")


class _PresentersCheck(BaseHTTPRequestHandler):
    """``GET /`` with ``X-Candidate: <value>``: 200 when the presenter presents that value."""

    traffic: Traffic

    def do_GET(self) -> None:
        ok, why = self.traffic.presenter_holds(self.headers.get("X-Candidate", "").encode())
        self.send_response(200 if ok else 503)
        self.end_headers()
        self.wfile.write(why.encode())

    def log_message(self, *_: Any) -> None:
        return


class Traffic:
    """A presenter and an acceptor on keyrotor.client, each with its own kubelet-style mount
    (``acceptor_lag`` / ``presenter_lag`` seconds behind the Secret); see the module docstring.
    """

    def __init__(self, tmp: Path, read_secret: Callable[[], dict[str, Any] | None], *,
                 acceptor_lag: float = 0.2, presenter_lag: float = 0.3) -> None:
        self.tmp = tmp
        self.read_secret = read_secret
        self.lags = {"acceptor": acceptor_lag, "presenter": presenter_lag}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.mirrors: list[SecretMirror] = []
        self.stats = tmp / "presenter.json"
        self.presenter_metrics = free_port()
        self.presenter_mount = tmp / "presenter" / "secret"
        self.acceptor_url = ""
        self._server: ThreadingHTTPServer | None = None

    def _mount(self, who: str) -> Path:
        root = self.tmp / who / "secret"
        mirror = SecretMirror(self.read_secret, root, period=self.lags[who])
        wait_for(mirror.sync, timeout=60, what="the Secret to exist")
        self.mirrors.append(mirror.start())
        return root

    def _run(self, name: str, *args: str) -> None:
        self.procs.append(spawn([sys.executable, "-m", "keyrotor.testing.consumerapp", *args],
                                self.tmp / f"{name}.log"))

    def start(self) -> Traffic:
        port = free_port()
        self._run("acceptor", "acceptor", "--mount", str(self._mount("acceptor")),
                  "--port", str(port), "--metrics-port", str(free_port()))
        self.acceptor_url = f"http://127.0.0.1:{port}/"
        wait_for(answers(self.acceptor_url), timeout=30, what="the acceptor")
        self._run("presenter", "presenter", "--mount", str(self._mount("presenter")),
                  "--url", self.acceptor_url, "--metrics-port", str(self.presenter_metrics),
                  "--stats", str(self.stats))
        wait_for(lambda: self.tally().get("sent", 0) > 0, timeout=30,
                 what="the presenter's first request")
        handler = type("Check", (_PresentersCheck,), {"traffic": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def consumers(self) -> list[dict[str, Any]]:
        """The spec's consumers: the acceptor (before promoting and before revoking) and the
        presenters check (before revoking)."""
        assert self._server is not None
        return [
            {"name": "acceptor", "http": {
                "url": self.acceptor_url,
                "headers": {"Authorization": "Bearer {{ candidate }}"}}},
            {"name": "presenters", "during": "Retirement", "http": {
                "url": f"http://127.0.0.1:{self._server.server_port}/",
                "headers": {"X-Candidate": "{{ candidate }}"}}},
        ]

    def presenter_holds(self, candidate: bytes) -> tuple[bool, str]:
        """Whether the presenter's library has loaded ``candidate`` as current: its mount
        holds it and the library's version gauge says it reloaded that version."""
        try:
            held = (self.presenter_mount / "current").read_bytes()
            versions = json.loads((self.presenter_mount / "versions.json").read_bytes())
        except (OSError, ValueError):
            return False, "mount not readable"
        if held != candidate:
            return False, "the presenter's mount does not hold the candidate as current"
        loaded = self._presenter_version()
        if loaded is None or loaded < int(versions["current"]):
            return False, f"the presenter still presents version {loaded}"
        return True, f"the presenter presents version {loaded}"

    def _presenter_version(self) -> int | None:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.presenter_metrics}/metrics",
                                        timeout=1) as response:
                text = response.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("keyrotor_client_secret_version{") and 'slot="current"' in line:
                return int(float(line.rsplit(" ", 1)[1]))
        return None

    def tally(self) -> dict[str, int]:
        try:
            return dict(json.loads(self.stats.read_text()))
        except (OSError, ValueError):
            return {}

    def stop(self) -> dict[str, int]:
        """Stop everything; the presenter's final tally."""
        for proc in reversed(self.procs):  # the presenter first: it needs the acceptor
            stop(proc)
        for mirror in self.mirrors:
            mirror.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        return self.tally()
