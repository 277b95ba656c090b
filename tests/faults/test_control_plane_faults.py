"""The control plane fails mid-rotation: kube-apiserver stopped for 10 s and started again, etcd
frozen (SIGSTOP) for 30 s and thawed. On the fault tier's own control plane (``fault_plane``).

Each test rotates a TwoKeys secret that real traffic goes through (a presenter and an acceptor
on keyrotor.client, each with a kubelet-style mount), breaks the control plane once the new
version is current and the old one still held (VerifyingRetirement), keeps it broken, heals it,
and then requires: the rotation finishes, a second one after it works, no request failed, no
version was skipped or duplicated, and nothing revoked came back.

While the API is away the operator cannot write status or events, so ``Degraded`` cannot show
on the object then; what it can show is its own ``/metrics``: ``keyrotor_reconcile_errors_total``
rising and the ``keyrotor_degraded`` gauge at 1, and afterwards ``Degraded`` False on the object.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client

from keyrotor.kube import KubeApi
from keyrotor.testing.controlplane import ControlPlane
from tests.faults.helpers import SecretPoller, Traffic
from tests.operator.conftest import OperatorProcess, rotating_secret
from tests.operator.helpers import condition, events_of, wait_status

NAME = "faulty"


@dataclass
class Observed:
    """What one fault run saw; printed, then asserted on."""

    samples: list[tuple[float, float, float | None, bool]] = field(default_factory=list)
    errors_before: float = 0.0
    fault_seconds: float = 0.0
    recovered_after: float = 0.0  # from healing to the interrupted rotation's end
    second_rotation: float = 0.0

    @property
    def errors_during(self) -> float:
        return max((s[1] for s in self.samples), default=self.errors_before) - \
            self.errors_before

    @property
    def degraded_seen(self) -> bool:
        return any(s[2] == 1 for s in self.samples)

    @property
    def operator_alive(self) -> bool:
        return all(s[3] for s in self.samples)


def reconcile_errors(operator: OperatorProcess, namespace: str) -> float:
    total = 0.0
    for line in operator.metrics().splitlines():
        if line.startswith("keyrotor_reconcile_errors_total{") and \
                f'namespace="{namespace}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def rotate_through_fault(plane: ControlPlane, kube: client.ApiClient, kapi: KubeApi,
                         namespace: str, operator: OperatorProcess, tmp: Path, *,
                         break_it: Callable[[], None], heal: Callable[[], None],
                         hold: float) -> tuple[Observed, SecretPoller, dict[str, int]]:
    plane.kubectl("apply", "-n", namespace, "-f", "-", input=rotating_secret(
        NAME, generator={"random": {"length": 32}},
        rotation={"minOverlap": "3s", "maxOverlap": "5m"},
        verification={"interval": "200ms", "successesRequired": 2, "failureThreshold": 3}))
    wait_status(kapi, namespace, NAME, lambda s: s.get("currentVersion") == 1,
                what="version 1")
    traffic = Traffic(tmp, lambda: kapi.get_secret(namespace, NAME)).start()
    poller = SecretPoller(kube, namespace, NAME).start()
    seen = Observed()
    try:
        plane.kubectl("patch", "rsec", NAME, "-n", namespace, "--type=merge", "-p",
                      json.dumps({"spec": {"consumers": traffic.consumers}}))
        kapi.annotate_rotating_secret(namespace, NAME, "keyrotor.io/rotate", "one")
        wait_status(kapi, namespace, NAME,
                    lambda s: s.get("phase") == "VerifyingRetirement"
                    and s.get("currentVersion") == 2, what="version 2 promoted")
        seen.errors_before = reconcile_errors(operator, namespace)
        started = time.monotonic()
        break_it()
        try:
            # Hold the fault (this loop is the hold, not a synchronisation) and sample what
            # the operator shows meanwhile.
            while time.monotonic() - started < hold:
                alive = operator.proc is not None and operator.proc.poll() is None
                seen.samples.append((time.monotonic() - started,
                                     reconcile_errors(operator, namespace),
                                     operator.metric("keyrotor_degraded",
                                                     namespace=namespace, name=NAME),
                                     alive))
                time.sleep(0.5)
        finally:
            heal()
            seen.fault_seconds = time.monotonic() - started
        healed = time.monotonic()
        wait_status(kapi, namespace, NAME,
                    lambda s: s.get("rotationCount") == 1 and s.get("phase") == "Idle",
                    timeout=120, what="the interrupted rotation to finish")
        seen.recovered_after = time.monotonic() - healed
        # The operator works normally afterwards: its watch came back (the trigger wakes it).
        again = time.monotonic()
        kapi.annotate_rotating_secret(namespace, NAME, "keyrotor.io/rotate", "two")
        wait_status(kapi, namespace, NAME,
                    lambda s: s.get("rotationCount") == 2 and s.get("phase") == "Idle",
                    timeout=60, what="a rotation after the fault")
        seen.second_rotation = time.monotonic() - again
    finally:
        tally = traffic.stop()
        poller.stop()
    print(f"fault held {seen.fault_seconds:.1f}s; reconcile errors during it "
          f"{seen.errors_during:.0f}; keyrotor_degraded samples "
          f"{[s[2] for s in seen.samples]}; operator alive throughout {seen.operator_alive}; "
          f"interrupted rotation finished {seen.recovered_after:.1f}s after healing; next "
          f"rotation took {seen.second_rotation:.1f}s; traffic {tally}; {poller.summary()}")
    return seen, poller, tally


def assert_no_damage(kapi: KubeApi, namespace: str, poller: SecretPoller,
                     tally: dict[str, int]) -> None:
    assert tally.get("failed", 0) == 0, tally
    assert tally.get("sent", 0) > 100, tally
    assert poller.problems == [], poller.problems
    assert poller.currents == [1, 2, 3], poller.currents  # none skipped, none twice
    assert sorted(poller.values) == [1, 2, 3]
    assert poller.revoked == {1, 2}
    status = wait_status(kapi, namespace, NAME, lambda s: True)
    assert status["latestVersion"] == 3 and status["currentVersion"] == 3
    assert condition(status, "Degraded")["status"] == "False", condition(status, "Degraded")
    events = events_of(kapi, namespace, NAME)
    promoted = [int(e["message"].split()[1]) for e in events if e["reason"] == "Promoted"]
    assert promoted == [2, 3], promoted
    warnings = [(e["reason"], e["message"]) for e in events if e["type"] == "Warning"]
    print(f"warning events: {warnings}")
    assert len(warnings) <= 2, warnings  # a report of the outage, not a storm


def test_apiserver_stopped_mid_rotation(
        fault_plane: ControlPlane, fault_kube: client.ApiClient, fault_kapi: KubeApi,
        fault_namespace: str, fault_operator: OperatorProcess, tmp_path: Path) -> None:
    seen, poller, tally = rotate_through_fault(
        fault_plane, fault_kube, fault_kapi, fault_namespace, fault_operator, tmp_path,
        break_it=fault_plane.stop_apiserver, heal=fault_plane.start_apiserver, hold=10)
    assert seen.operator_alive, "the operator exited while the API server was away"
    assert_no_damage(fault_kapi, fault_namespace, poller, tally)
    assert poller.errors > 0  # the poller did see the outage
    # What the operator can show while it cannot write to the API: its metrics.
    assert seen.errors_during > 0, seen.samples
    assert seen.degraded_seen, (
        f"keyrotor_degraded never 1 during the outage although reconcile errors rose by "
        f"{seen.errors_during:.0f}: {seen.samples}")
    assert fault_operator.metric("keyrotor_degraded", namespace=fault_namespace,
                                 name=NAME) == 0
    # An API server away is weather, not a bug: no traceback, and back to work at once.
    assert "Traceback" not in fault_operator.log_text(), "a traceback in the operator log"
    assert seen.recovered_after < 10, f"{seen.recovered_after:.1f}s to finish after healing"


def test_etcd_paused_mid_rotation(
        fault_plane: ControlPlane, fault_kube: client.ApiClient, fault_kapi: KubeApi,
        fault_namespace: str, fault_operator: OperatorProcess, tmp_path: Path) -> None:
    seen, poller, tally = rotate_through_fault(
        fault_plane, fault_kube, fault_kapi, fault_namespace, fault_operator, tmp_path,
        break_it=fault_plane.pause_etcd, heal=fault_plane.resume_etcd, hold=30)
    assert seen.operator_alive, "the operator exited while etcd was frozen"
    assert_no_damage(fault_kapi, fault_namespace, poller, tally)
    assert poller.longest_gap > 20  # the poller did see the freeze
    assert seen.errors_during > 0 and seen.degraded_seen, (
        f"the operator showed nothing during the 30 s freeze: reconcile errors "
        f"+{seen.errors_during:.0f}, keyrotor_degraded {sorted({s[2] for s in seen.samples})} "
        "(does each API call have a timeout?)")
    assert fault_operator.metric("keyrotor_degraded", namespace=fault_namespace,
                                 name=NAME) == 0
    assert "Traceback" not in fault_operator.log_text(), "a traceback in the operator log"
    assert seen.recovered_after < 10, f"{seen.recovered_after:.1f}s to finish after healing"
