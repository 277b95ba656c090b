"""The README's first command works: the demo runs a whole rotation and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from keyrotor.testing.toolchain import ensure_binaries


def test_demo_rotates_with_zero_rejections(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    # No cluster in the kubeconfig: the demo must bring up its own control plane.
    env.update(HOME=str(tmp_path), TMPDIR=str(tmp_path), KUBECONFIG=str(tmp_path / "none"),
               KEYROTOR_ENVTEST_BIN=str(ensure_binaries().kube_apiserver.parent),
               COLUMNS="200")
    done = subprocess.run([sys.executable, "-m", "keyrotor.demo"], env=env, capture_output=True,
                          text=True, timeout=240)
    out = " ".join(done.stdout.split())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "a local control plane at https://127.0.0.1:" in out
    assert "spec.rotation.every must be a duration such as 720h" in out
    assert "version 1 revoked; version 2 is current." in out
    assert ", 0 rejected." in out
    for phase in ("VerifyingAcceptance", "VerifyingRetirement", "Revoking"):
        assert phase in out
    # The demo's control plane is gone with its directory (it lived under TMPDIR).
    assert not list(tmp_path.glob("keyrotor-cp-*"))
    assert not list(tmp_path.glob("keyrotor-demo-*"))
