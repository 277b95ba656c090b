"""``keyrotor dev cluster up|down|status``: a detached local control plane for humans.

Unlike the test fixture, this one outlives the command that started it. Its state (pids,
kubeconfig, logs) is kept in one folder, ``$KEYROTOR_CACHE/devcluster`` by default, so ``down``
can find and stop it from any shell.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

from keyrotor.testing.controlplane import ControlPlane, _pid_alive
from keyrotor.testing.toolchain import cache_root


def state_dir() -> Path:
    return cache_root() / "devcluster"


def _read_state() -> dict[str, object] | None:
    path = state_dir() / "state.json"
    if not path.is_file():
        return None
    state: dict[str, object] = json.loads(path.read_text())
    return state


def _alive(state: dict[str, object]) -> bool:
    pids = state.get("pids")
    return isinstance(pids, dict) and all(_pid_alive(int(p)) for p in pids.values())


def up() -> Path:
    """Start the dev control plane unless one is already running; return its kubeconfig."""
    state = _read_state()
    if state and _alive(state):
        return Path(str(state["kubeconfig"]))
    down()
    base = state_dir()
    base.mkdir(parents=True, exist_ok=True)
    plane = ControlPlane(attached=False, base_dir=base).start()
    # A stable path for the kubeconfig, whatever temporary folder the plane got.
    stable = base / "kubeconfig"
    shutil.copyfile(plane.kubeconfig, stable)
    stable.chmod(0o600)
    (base / "state.json").write_text(json.dumps({
        "pids": plane.pids,
        "workdir": str(plane.workdir),
        "kubeconfig": str(stable),
        "url": plane.url,
        "ready_seconds": round(plane.ready_seconds, 2),
    }))
    return stable


def down() -> bool:
    """Stop the dev control plane if one runs; True when something was stopped."""
    state = _read_state()
    if state is None:
        return False
    pids = state.get("pids")
    stopped = False
    if isinstance(pids, dict):
        for name in ("kube-apiserver", "etcd"):
            pid = pids.get(name)
            if pid is None or not _pid_alive(int(pid)):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid), signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _pid_alive(int(pid)) and time.monotonic() < deadline:
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid), signal.SIGKILL)
            stopped = True
    shutil.rmtree(str(state.get("workdir", "")), ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (state_dir() / "state.json").unlink()
    return stopped


def status() -> dict[str, object] | None:
    state = _read_state()
    if state is None or not _alive(state):
        return None
    return state
