"""A consumer that flaps between passing and failing every 300 ms.

Two of the RotatingSecret's consumers are one flapping HTTP service: ``flaky-acceptance``
(probed before promoting) and ``flaky-retirement`` (probed before revoking), on two paths, so
the service's own log tells which question each probe answered. Real traffic (presenter and
acceptor on keyrotor.client) goes through the Secret meanwhile.

1. Only retirement flaps, and ``successesRequired: 5`` at a 100 ms interval cannot be met in a
   300 ms window: the rotation must hold with version 1 kept, go to Holding with ``Degraded``
   True past ``maxOverlap``, and finish (``Degraded`` False) once the consumer is steady.
2. Both flap, ``successesRequired: 2``: rotations go through the passing windows. For every
   version, the last two probes before its promotion and before its predecessor's revocation
   passed: nothing is presented or revoked on a verdict that was not earned.

``failureThreshold: 2``: every failing window is long enough to count as a failure, so the
Warning events show how the operator reports a flapping consumer: once per version under test
at most, not once per flap.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubernetes import client

from keyrotor.kube import KubeApi
from keyrotor.testing.controlplane import ControlPlane
from tests.faults.helpers import SecretPoller, Traffic
from tests.operator.conftest import OperatorProcess, rotating_secret
from tests.operator.helpers import condition, events_of, stop_rotating, wait_status

FLAP = 0.3  # seconds passing, then as long failing


@dataclass
class Flapper:
    """An HTTP consumer whose paths in ``flapping`` answer 200 and 503 in turns of ``FLAP``
    seconds (the others 200); it logs (path, candidate, status) for every probe."""

    flapping: set[str] = field(default_factory=set)
    log: list[tuple[str, bytes, int]] = field(default_factory=list)
    _epoch: float = field(default_factory=time.monotonic)
    _server: ThreadingHTTPServer | None = None

    def answer(self, path: str) -> int:
        if path not in self.flapping:
            return 200
        return 200 if int((time.monotonic() - self._epoch) / FLAP) % 2 == 0 else 503

    def start(self) -> str:
        flapper = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status = flapper.answer(self.path)
                flapper.log.append((self.path, self.headers.get("X-Candidate", "").encode(),
                                    status))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def last(self, path: str, candidate: bytes, count: int) -> list[int]:
        """The answers to the last ``count`` probes of ``path`` with ``candidate``."""
        return [s for p, c, s in self.log if p == path and c == candidate][-count:]


def test_flapping_consumer(control_plane: ControlPlane, kube: client.ApiClient, kapi: KubeApi,
                           namespace: str, operator: OperatorProcess, tmp_path: Path) -> None:
    name = "flappy"
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=rotating_secret(
        name, generator={"random": {"length": 32}},
        rotation={"minOverlap": "1s", "maxOverlap": "2s"},
        verification={"interval": "100ms", "successesRequired": 5, "failureThreshold": 2}))
    wait_status(kapi, namespace, name, lambda s: s.get("currentVersion") == 1,
                what="version 1")
    flapper = Flapper(flapping={"/retirement"})
    url = flapper.start()
    traffic = Traffic(tmp_path, lambda: kapi.get_secret(namespace, name),
                      acceptor_lag=0.1, presenter_lag=0.15).start()
    poller = SecretPoller(kube, namespace, name).start()
    consumers = [*traffic.consumers,
                 {"name": "flaky-acceptance", "during": "Acceptance", "http": {
                     "url": f"{url}/acceptance", "headers": {"X-Candidate": "{{ candidate }}"}}},
                 {"name": "flaky-retirement", "during": "Retirement", "http": {
                     "url": f"{url}/retirement", "headers": {"X-Candidate": "{{ candidate }}"}}}]
    try:
        control_plane.kubectl("patch", "rsec", name, "-n", namespace, "--type=merge", "-p",
                              json.dumps({"spec": {"consumers": consumers}}))
        # 1. Retirement flaps and can never collect 5 passes in a row: hold, Degraded.
        kapi.annotate_rotating_secret(namespace, name, "keyrotor.io/rotate", "hold")
        flapping_since = time.monotonic()
        held = wait_status(kapi, namespace, name,
                           lambda s: s.get("phase") == "Holding"
                           and condition(s, "Degraded").get("status") == "True",
                           timeout=30, what="Holding and Degraded while the consumer flaps")
        assert held["currentVersion"] == 2 and held["previousVersion"] == 1, held
        assert condition(held, "Degraded")["reason"] == "Holding"
        degraded_after = time.monotonic() - flapping_since
        # Keep flapping a while longer: the hold must last (checked by the poller: version 1
        # stays in the Secret) and post no more Holding warnings.
        time.sleep(3)  # the fault's duration, not a wait for something
        assert 1 not in poller.revoked, "version 1 revoked while the consumer flapped"
        flapper.flapping = set()
        steady = time.monotonic()
        done = wait_status(kapi, namespace, name,
                           lambda s: s.get("rotationCount") == 1 and s.get("phase") == "Idle",
                           timeout=30, what="the held rotation to finish once steady")
        recovered_after = time.monotonic() - steady
        assert condition(done, "Degraded")["status"] == "False", condition(done, "Degraded")

        # 2. Both flap, 2 passes in a row suffice: rotations go through the passing windows.
        control_plane.kubectl("patch", "rsec", name, "-n", namespace, "--type=merge", "-p",
                              json.dumps({"spec": {
                                  "rotation": {"every": "1s", "maxOverlap": "30s"},
                                  "verification": {"successesRequired": 2}}}))
        flapper.flapping = {"/acceptance", "/retirement"}
        wait_status(kapi, namespace, name, lambda s: s.get("rotationCount", 0) >= 4,
                    timeout=60, what="three rotations while both checks flap")
        final = stop_rotating(control_plane, kapi, namespace, name)
    finally:
        tally = traffic.stop()
        poller.stop()
        flapper.stop()

    events = events_of(kapi, namespace, name)
    warnings = Counter(e["reason"] for e in events if e["type"] == "Warning")
    answers = Counter(s for _, _, s in flapper.log)
    print(f"Degraded after {degraded_after:.1f}s of flapping; held rotation finished "
          f"{recovered_after:.1f}s after the consumer steadied; {final['rotationCount']} "
          f"rotations; flapper answered {dict(answers)}; warnings {dict(warnings)}; "
          f"traffic {tally}; {poller.summary()}")
    latest = final["latestVersion"]
    assert tally.get("failed", 0) == 0, tally
    assert poller.problems == [], poller.problems
    assert poller.currents == list(range(1, latest + 1)), poller.currents
    assert sorted(poller.values) == list(range(1, latest + 1))
    assert final["rotationCount"] == latest - 1 and final["currentVersion"] == latest
    assert answers[503] > 0  # it did flap while probed
    for version in range(2, latest + 1):
        value = poller.values[version]
        needed = 5 if version == 2 else 2
        # Promoted on `needed` passes in a row with this very version, and its predecessor
        # revoked only after `needed` passing retirement probes.
        assert flapper.last("/acceptance", value, needed) == [200] * needed, version
        assert flapper.last("/retirement", value, needed) == [200] * needed, version
        promoted, revoked = poller.first_seen(version, "current"), poller.revoked_at(version - 1)
        assert promoted is not None and revoked is not None
        assert revoked - promoted >= 1.0 - 0.2, f"version {version - 1} revoked too early"
    assert warnings["Holding"] == 1, warnings
    # A consumer failing is worth a Warning; one that flaps is worth one per version under
    # test (acceptance and retirement), not one per flap: that would be thousands an hour.
    assert warnings["ConsumerFailing"] <= 2 * final["rotationCount"], \
        f"Warning storm: {warnings['ConsumerFailing']} ConsumerFailing events for " \
        f"{final['rotationCount']} rotations of a consumer flapping every {FLAP}s"
