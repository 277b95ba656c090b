"""``keyrotor demo``: keyrotor on a cluster, shown live.

Uses the current kubeconfig when a cluster answers there; otherwise starts the local control
plane (kube-apiserver + etcd built from Go modules) for the length of the demo. Then it installs
the CRD and shows the API the way a platform engineer meets it: ``kubectl explain`` and
``kubectl get``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from keyrotor.testing.controlplane import ControlPlane
from keyrotor.testing.toolchain import ensure_binaries, repo_root
from keyrotor.testing.waiting import wait_for

console = Console(highlight=False, soft_wrap=True)


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path
    kubectl: str
    description: str

    def kubectl_run(self, *args: str, check: bool = True,
                    input: str | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([self.kubectl, "--kubeconfig", str(self.kubeconfig), *args],
                              capture_output=True, text=True, check=False, input=input,
                              timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
        return done


def _current_kubeconfig() -> Path | None:
    candidates = os.environ.get("KUBECONFIG", "").split(os.pathsep)
    candidates.append(str(Path.home() / ".kube" / "config"))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    """The current kubeconfig's cluster if it answers, else a local control plane."""
    kubectl = shutil.which("kubectl") or str(ensure_binaries().kubectl)
    existing = _current_kubeconfig()
    if existing is not None:
        probe = subprocess.run([kubectl, "--kubeconfig", str(existing), "--request-timeout=3s",
                                "get", "--raw", "/readyz"], capture_output=True, text=True,
                               check=False)
        if probe.returncode == 0:
            yield Cluster(existing, kubectl, f"the current kubeconfig ({existing})")
            return
        console.print(f"[dim]{existing} does not answer; starting a local control plane[/]")
    with console.status("starting a local control plane (kube-apiserver + etcd) ..."):
        plane = ControlPlane().start()
    try:
        yield Cluster(plane.kubeconfig, str(ensure_binaries().kubectl),
                      f"a local control plane at {plane.url} "
                      f"(ready in {plane.ready_seconds:.1f}s)")
    finally:
        plane.stop()


def install_crds(target: Cluster) -> None:
    target.kubectl_run("apply", "--server-side", "--force-conflicts", "-f",
                       str(repo_root() / "crds"))
    target.kubectl_run("wait", "--for=condition=Established", "--timeout=60s",
                       "crd/rotatingsecrets.keyrotor.io")


SAMPLE = """\
apiVersion: keyrotor.io/v1alpha1
kind: RotatingSecret
metadata:
  name: demo-api-key
  namespace: default
spec:
  secretName: demo-api-key
  rotation: {every: 720h, minOverlap: 10m, maxOverlap: 24h}
  generator:
    random: {length: 32, encoding: base64url}
"""


def main() -> int:
    console.rule("[bold]keyrotor demo")
    with tempfile.TemporaryDirectory(prefix="keyrotor-demo-"), cluster() as target:
        console.print(f"cluster: {target.description}")
        install_crds(target)
        console.print("[green]CRD installed:[/] rotatingsecrets.keyrotor.io")
        # The apiserver publishes a new CRD's OpenAPI a moment after it is Established.
        explain = wait_for(
            lambda: target.kubectl_run("explain", "rotatingsecret.spec.rotation", check=False)
            .stdout, what="kubectl explain rotatingsecret", timeout=60)
        console.print(explain)
        target.kubectl_run("apply", "-f", "-", input=SAMPLE)
        bad = target.kubectl_run("apply", "-f", "-", check=False,
                                 input=SAMPLE.replace("720h", "30 days"))
        console.print("[bold]admission rejects a malformed duration:[/]")
        console.print(bad.stderr.strip())
        console.print("[bold]kubectl get rotatingsecrets -A[/]")
        console.print(target.kubectl_run("get", "rsec", "-A").stdout)
        target.kubectl_run("delete", "rsec", "demo-api-key", "-n", "default")
    return 0


if __name__ == "__main__":
    sys.exit(main())
