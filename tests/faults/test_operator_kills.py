"""SIGKILL the operator at random moments over at least 50 fast rotations, restarting it at
once each time, while real traffic goes through the Secret.

The kill delays (and the rotation's timings) come from a seeded RNG whose seed is printed:
``KEYROTOR_FAULT_SEED=<seed>`` replays a run. Unlike tests/operator/test_crash.py, which kills
at each phase boundary in slow motion, the kills here land anywhere: mid-probe, mid-write,
between a Secret write and its status write, during kopf's startup.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from pathlib import Path

from kubernetes import client

from keyrotor.kube import KubeApi
from keyrotor.testing.controlplane import ControlPlane
from tests.faults.helpers import SecretPoller, Traffic
from tests.operator.conftest import OperatorProcess, rotating_secret
from tests.operator.helpers import events_of, status_of, stop_rotating, wait_status

ROTATIONS = 50
BUDGET = 150.0  # seconds of killing at most; the test fails if 50 rotations take longer
# A kill every 2.25 s on average (from the restarted process's first breath): each restart
# costs about a second before the operator works again, so kills much more often than this
# would leave too little running time for 50 rotations in the budget.
KILL_DELAY = (0.5, 4.0)


def test_sigkill_at_random_moments(control_plane: ControlPlane, kube: client.ApiClient,
                                   kapi: KubeApi, namespace: str, operator: OperatorProcess,
                                   tmp_path: Path) -> None:
    seed = int(os.environ.get("KEYROTOR_FAULT_SEED") or time.time_ns() % 2**32)
    rng = random.Random(seed)
    min_overlap = f"{rng.randrange(200, 501, 100)}ms"  # fast: 50 rotations in ~90 s
    interval = f"{rng.choice((100, 150, 200))}ms"
    print(f"KEYROTOR_FAULT_SEED={seed}: minOverlap {min_overlap}, interval {interval}")
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=rotating_secret(
        "killed", generator={"random": {"length": 32}},
        # Suspended until the poller watches: version 1 is issued anyway, and must be seen.
        rotation={"every": "1s", "minOverlap": min_overlap, "maxOverlap": "5m",
                  "suspend": True},
        verification={"interval": interval, "successesRequired": 1, "failureThreshold": 5}))
    wait_status(kapi, namespace, "killed", lambda s: s.get("currentVersion") == 1,
                what="version 1")
    traffic = Traffic(tmp_path, lambda: kapi.get_secret(namespace, "killed"),
                      acceptor_lag=0.1, presenter_lag=0.15).start()
    poller = SecretPoller(kube, namespace, "killed").start()
    kills: list[tuple[float, str]] = []
    try:
        control_plane.kubectl("patch", "rsec", "killed", "-n", namespace, "--type=merge", "-p",
                              json.dumps({"spec": {"consumers": traffic.consumers,
                                                   "rotation": {"suspend": False}}}))
        started = time.monotonic()
        while time.monotonic() - started < BUDGET:
            status = status_of(kapi, namespace, "killed")
            if status.get("rotationCount", 0) >= ROTATIONS:
                break
            delay = rng.uniform(*KILL_DELAY)
            time.sleep(delay)  # the kill's random moment: a fault's timing, not a wait
            phase = status_of(kapi, namespace, "killed").get("phase", "?")
            operator.kill()
            kills.append((delay, phase))
            operator.start()
        elapsed = time.monotonic() - started
        final = stop_rotating(control_plane, kapi, namespace, "killed")
    finally:
        tally = traffic.stop()
        poller.stop()

    phases = Counter(phase for _, phase in kills)
    events = events_of(kapi, namespace, "killed")
    warnings = Counter(e["reason"] for e in events if e["type"] == "Warning")
    print(f"{len(kills)} kills in {elapsed:.0f}s over {final['rotationCount']} rotations "
          f"(seed {seed}); phase seen just before each kill: {dict(phases)}; delays "
          f"{[round(d, 2) for d, _ in kills]}; traffic {tally}; warnings {dict(warnings)}; "
          f"{poller.summary()}")
    rotations, latest = final["rotationCount"], final["latestVersion"]
    assert rotations >= ROTATIONS, f"only {rotations} rotations in {BUDGET:.0f}s of kills"
    assert len(kills) >= 20, len(kills)
    assert tally.get("failed", 0) == 0, tally
    assert poller.problems == [], poller.problems
    # Every version current in turn, none skipped or numbered twice, each revoked after.
    assert final["currentVersion"] == latest == rotations + 1
    assert poller.currents == list(range(1, latest + 1)), poller.currents
    # A kill after staging the next version but before its status write, with the suspend
    # landing meanwhile, leaves that version staged (never current) ahead of the status: the
    # engine allows latest + 1 there and the next rotation stages the same value under the
    # same number (nothing skipped or numbered twice: the currents above say so).
    assert sorted(poller.values) in (list(range(1, latest + 1)), list(range(1, latest + 2)))
    assert poller.revoked == set(range(1, latest))
    promoted = [int(e["message"].split()[1]) for e in events if e["reason"] == "Promoted"]
    assert promoted == list(range(2, latest + 1)), promoted  # each exactly once
    revoked = Counter(e["message"].split()[1] for e in events if e["reason"] == "Revoked")
    assert all(n == 1 for n in revoked.values()) and len(revoked) == rotations, revoked
