"""``keyrotor demo`` (``scripts/demo``): one whole rotation, shown live.

Uses the current kubeconfig when a cluster answers there; otherwise starts the local control
plane (kube-apiserver + etcd built from Go modules) for the length of the demo. Then it:

1. installs the CRD and shows that admission rejects a malformed RotatingSecret;
2. starts the operator (``keyrotor run``, in slow motion so every phase is visible);
3. starts a demo acceptor (an HTTP service accepting whatever ``current``, ``next`` and
   ``previous`` hold, refreshed with a lag like kubelet's) and a demo presenter (a client that
   sends ``current`` 20 times a second);
4. applies a RotatingSecret, waits for version 1, triggers a rotation and draws its progress
   through every phase until the old version is revoked.

It exits 0 when the old version is revoked and no request was rejected, and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from keyrotor.kube import KubeApi, load_client
from keyrotor.testing.controlplane import ControlPlane, free_port
from keyrotor.testing.democonsumer import Acceptor, Presenter
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


NAMESPACE = "keyrotor-demo"
NAME = "demo-api-key"
PHASES = ("Generating", "VerifyingAcceptance", "Promoting", "VerifyingRetirement", "Revoking",
          "Idle")
EXPLAIN = {
    "Generating": "a new version is allocated and generated",
    "VerifyingAcceptance": "staged as `next`: acceptors must accept it before anyone presents it",
    "Promoting": "`current` = new, `previous` = old",
    "VerifyingRetirement": "consumers verified on the new version, minOverlap running",
    "Revoking": "the old version is removed",
    "Idle": "done: one version valid again",
}


def rotating_secret(acceptor_url: str) -> dict[str, Any]:
    return {
        "apiVersion": "keyrotor.io/v1alpha1", "kind": "RotatingSecret",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "secretName": NAME,
            "rotation": {"minOverlap": "3s", "maxOverlap": "2m"},
            "verification": {"interval": "500ms", "successesRequired": 2},
            "generator": {"random": {"length": 32, "encoding": "base64url"}},
            "consumers": [{"name": "demo-api", "http": {
                "url": acceptor_url,
                "headers": {"Authorization": "Bearer {{ candidate }}"}}}],
        },
    }


def _view(status: dict[str, Any], seen: list[str], secret: dict[str, Any] | None,
          presenter: Presenter, acceptor: Acceptor, events: list[dict[str, Any]]) -> Group:
    phase = status.get("phase", "-")
    steps = Table(box=None, show_header=False, pad_edge=False)
    for name in PHASES:
        mark = "[green]✓[/]" if name in seen and name != phase else (
            "[bold yellow]▶[/]" if name == phase else "[dim]·[/]")
        steps.add_row(mark, name, f"[dim]{EXPLAIN[name]}[/]")
    annotations = ((secret or {}).get("metadata") or {}).get("annotations") or {}
    slots = Table("slot", "version", "fingerprint", box=None, header_style="bold")
    for slot in ("current", "next", "previous"):
        version = annotations.get(f"keyrotor.io/{slot}-version")
        slots.add_row(slot, version or "-",
                      annotations.get(f"keyrotor.io/{slot}-fingerprint", "-") if version else "-")
    traffic = Text.from_markup(
        f"presenter: [bold]{presenter.sent}[/] requests, "
        f"[bold {'green' if presenter.rejected == 0 else 'red'}]{presenter.rejected}[/] "
        f"rejected   acceptor (refreshes every {acceptor.lag:.0f}s): "
        f"{acceptor.accepted} accepted")
    recent = Table("event", "message", box=None, header_style="bold")
    for event in events[-6:]:
        style = "red" if event.get("type") == "Warning" else ""
        recent.add_row(Text(event["reason"], style=style), event["message"])
    return Group(Text.from_markup(f"[bold]RotatingSecret {NAMESPACE}/{NAME}[/]  phase "
                                  f"[bold yellow]{phase}[/]  {status.get('message', '')}"),
                 steps, slots, traffic, recent)


def start_operator(kubeconfig: Path, log_path: Path) -> subprocess.Popen[bytes]:
    metrics_port = free_port()
    with open(log_path, "wb") as log:
        operator = subprocess.Popen(
            [sys.executable, "-m", "keyrotor", "run", "-n", NAMESPACE, "--kubeconfig",
             str(kubeconfig), "--metrics-port", str(metrics_port), "--liveness-port",
             str(free_port()), "--phase-pause", "1.5"], stdout=log, stderr=subprocess.STDOUT)
    console.print(f"operator started (metrics on :{metrics_port}, log {log_path})")
    return operator


async def _rotate_live(api: KubeApi, target: Cluster) -> bool:
    def read() -> dict[str, Any] | None:
        return api.get_secret(NAMESPACE, NAME)

    acceptor = Acceptor(read, lag=1.0)
    url = await acceptor.start()
    presenter = Presenter(read, url, period=0.05)
    try:
        await asyncio.to_thread(target.kubectl_run, "apply", "-f", "-",
                                input=yaml.safe_dump(rotating_secret(url)))
        with console.status("waiting for version 1 ..."):
            await asyncio.to_thread(wait_for, lambda: (api.get_rotating_secret(
                NAMESPACE, NAME) or {}).get("status", {}).get("currentVersion"), timeout=60,
                what="version 1")
            await asyncio.to_thread(wait_for, lambda: "current" in acceptor.slots_held,
                                    timeout=30, what="the acceptor to load version 1")
        presenter.start()
        before = (api.get_rotating_secret(NAMESPACE, NAME) or {}).get("status", {})
        rotations = before.get("rotationCount", 0)
        api.annotate_rotating_secret(NAMESPACE, NAME, "keyrotor.io/rotate", str(time.time()))
        console.print(f"version {before.get('currentVersion')} is current; rotation requested "
                      "(annotation keyrotor.io/rotate)")
        seen: list[str] = []
        deadline = time.monotonic() + 120
        with Live(console=console, refresh_per_second=8) as live:
            while time.monotonic() < deadline:
                obj = await asyncio.to_thread(api.get_rotating_secret, NAMESPACE, NAME) or {}
                status = obj.get("status") or {}
                if status.get("phase") and status["phase"] not in seen:
                    seen.append(status["phase"])
                secret = await asyncio.to_thread(read)
                events = await asyncio.to_thread(api.list_events, NAMESPACE, NAME)
                events.sort(key=lambda e: int(e["metadata"]["resourceVersion"]))  # creation order
                live.update(_view(status, seen, secret, presenter, acceptor, events))
                if status.get("rotationCount", 0) > rotations and status.get("phase") == "Idle":
                    break
                await asyncio.sleep(0.25)
            else:
                return False
        await asyncio.sleep(1.0)  # a last second of traffic on the new version alone
        final = (api.get_rotating_secret(NAMESPACE, NAME) or {}).get("status", {})
        ok = presenter.rejected == 0 and final.get("previousVersion") is None
        colour = "green" if ok else "red"
        console.print(
            f"[bold {colour}]version {before.get('currentVersion')} revoked; version "
            f"{final.get('currentVersion')} is current. {presenter.sent} requests during the "
            f"rotation, {presenter.rejected} rejected.[/]")
        return ok
    finally:
        await presenter.stop()
        await acceptor.stop()


def main() -> int:
    console.rule("[bold]keyrotor demo")
    with tempfile.TemporaryDirectory(prefix="keyrotor-demo-") as tmp, cluster() as target:
        console.print(f"cluster: {target.description}")
        install_crds(target)
        console.print("[green]CRD installed:[/] rotatingsecrets.keyrotor.io")
        target.kubectl_run("create", "namespace", NAMESPACE, check=False)
        target.kubectl_run("delete", "rsec", NAME, "-n", NAMESPACE, "--ignore-not-found",
                           "--wait=false")
        target.kubectl_run("delete", "secret", NAME, "-n", NAMESPACE, "--ignore-not-found")
        bad = rotating_secret("http://127.0.0.1:1/")
        bad["spec"]["rotation"]["every"] = "30 days"
        rejected = target.kubectl_run("apply", "-f", "-", check=False,
                                      input=yaml.safe_dump(bad))
        console.print("[bold]admission rejects a malformed RotatingSecret:[/]")
        console.print(f"  {' '.join(rejected.stderr.split())}")
        api = KubeApi(load_client(str(target.kubeconfig)))
        operator = start_operator(target.kubeconfig, Path(tmp) / "operator.log")
        try:
            ok = asyncio.run(_rotate_live(api, target))
        finally:
            operator.terminate()
            try:
                operator.wait(15)
            except subprocess.TimeoutExpired:
                operator.kill()
        console.print("[bold]kubectl get rotatingsecrets -n keyrotor-demo[/]")
        console.print(target.kubectl_run("get", "rsec", "-n", NAMESPACE).stdout)
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
