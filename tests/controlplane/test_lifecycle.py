"""The launcher leaves nothing behind: no process, no temporary directory, even when killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from keyrotor.testing.controlplane import ControlPlane, _pid_alive, remove_stale_dirs
from keyrotor.testing.waiting import wait_for


def test_stop_removes_processes_and_directory(tmp_path: Path) -> None:
    plane = ControlPlane(base_dir=tmp_path).start()
    pids, workdir = plane.pids, plane.workdir
    assert set(pids) == {"etcd", "kube-apiserver"}
    assert all(_pid_alive(pid) for pid in pids.values())
    assert plane.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    plane.stop()
    assert not any(_pid_alive(pid) for pid in pids.values())
    assert not workdir.exists()
    plane.stop()  # idempotent


def test_failure_inside_the_context_still_cleans_up(tmp_path: Path) -> None:
    seen: dict[str, object] = {}
    with pytest.raises(RuntimeError, match="boom"), ControlPlane(base_dir=tmp_path) as plane:
        seen.update(pids=plane.pids, workdir=plane.workdir)
        raise RuntimeError("boom")
    assert isinstance(seen["pids"], dict)
    assert not any(_pid_alive(pid) for pid in seen["pids"].values())
    assert not Path(str(seen["workdir"])).exists()


SCRIPT = """
import json, sys, time
from pathlib import Path
from keyrotor.testing.controlplane import ControlPlane
plane = ControlPlane(base_dir=Path(sys.argv[1])).start()
print(json.dumps({"pids": plane.pids, "workdir": str(plane.workdir)}), flush=True)
time.sleep(600)
"""


def test_sigkilled_owner_takes_its_servers_along(tmp_path: Path) -> None:
    owner = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)],
                             stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    started = json.loads(owner.stdout.readline())
    pids = started["pids"]
    assert all(_pid_alive(pid) for pid in pids.values())

    os.kill(owner.pid, signal.SIGKILL)
    owner.wait(10)

    def all_dead() -> bool:
        return not any(_pid_alive(pid) for pid in pids.values())

    wait_for(all_dead, timeout=15, what="etcd and kube-apiserver gone after SIGKILL")
    # The directory outlives a SIGKILL; the next start (or this sweep) removes it.
    assert Path(started["workdir"]).exists()
    assert Path(started["workdir"]) in remove_stale_dirs(tmp_path)
    assert not Path(started["workdir"]).exists()
