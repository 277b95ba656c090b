"""Helpers for operator tests: waiting on status, a Secret witness, a switchable consumer."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml
from aiohttp import web
from kubernetes import client, watch

from keyrotor.kube import KubeApi
from keyrotor.testing.controlplane import ControlPlane, free_port
from keyrotor.testing.democonsumer import serve
from keyrotor.testing.processes import spawn
from keyrotor.testing.waiting import wait_for
from tests.operator.conftest import remember_secret


def token_kubeconfig(plane: ControlPlane, service_account: str, namespace: str,
                     path: Path) -> Path:
    """A kubeconfig that authenticates as ``service_account`` with a TokenRequest token, as a
    pod of that ServiceAccount would."""
    token = plane.kubectl("create", "token", service_account, "-n", namespace,
                          "--duration=1h").stdout.strip()
    config = yaml.safe_load(plane.kubeconfig.read_text())
    config["users"] = [{"name": "sa", "user": {"token": token}}]
    config["contexts"] = [{"name": "sa", "context": {"cluster": "keyrotor-envtest",
                                                      "user": "sa"}}]
    config["current-context"] = "sa"
    path.write_text(yaml.safe_dump(config))
    return path


def status_of(kapi: KubeApi, namespace: str, name: str) -> dict[str, Any]:
    obj = kapi.get_rotating_secret(namespace, name) or {}
    return dict(obj.get("status") or {})


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((dict(c) for c in status.get("conditions") or () if c["type"] == kind), {})


def wait_status(kapi: KubeApi, namespace: str, name: str,
                predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 60,
                what: str = "status") -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        status = status_of(kapi, namespace, name)
        return status if status and predicate(status) else None

    return wait_for(check, timeout=timeout, interval=0.1, what=what)


async def await_status(kapi: KubeApi, namespace: str, name: str,
                       predicate: Callable[[dict[str, Any]], bool], *, within: float = 60,
                       what: str = "status") -> dict[str, Any]:
    return await asyncio.to_thread(wait_status, kapi, namespace, name, predicate,
                                   timeout=within, what=what)


def events_of(kapi: KubeApi, namespace: str, name: str) -> list[dict[str, Any]]:
    # In the order they were created: etcd's revision (timestamps have whole seconds only, and
    # transition events are named by reason, not by time).
    return sorted(kapi.list_events(namespace, name),
                  key=lambda e: int(e["metadata"]["resourceVersion"]))


def answers(url: str) -> Callable[[], bool]:
    """A check for wait_for: does ``url`` answer (anything but a 5xx)?"""
    def check() -> bool:
        try:
            return requests.get(url, timeout=1).status_code < 500
        except requests.RequestException:
            return False

    return check


def start_key_service(tmp: Path, mode: str) -> tuple[subprocess.Popen[bytes], str, str]:
    """The reference webhook key service (``one`` or ``two`` keys), answering; returns the
    process, its URL and its management token."""
    token = secrets.token_urlsafe(24)
    (tmp / "token").write_text(token)
    port = free_port()
    proc = spawn([sys.executable, "-m", "keyrotor.testing.keyservice", "--mode", mode,
                  "--port", str(port), "--token-file", str(tmp / "token")],
                 tmp / "keyservice.log")
    url = f"http://127.0.0.1:{port}"
    wait_for(answers(f"{url}/keys"), timeout=30, what="the key service")
    return proc, url, token


def stop_rotating(plane: ControlPlane, kapi: KubeApi, namespace: str,
                  name: str) -> dict[str, Any]:
    """Suspend the rotation and wait for the one in progress to finish; its final status."""
    plane.kubectl("patch", "rsec", name, "-n", namespace, "--type=merge",
                  "-p", '{"spec": {"rotation": {"suspend": true}}}')
    return wait_status(kapi, namespace, name, lambda s: s.get("phase") == "Idle",
                       timeout=60, what="the last rotation to finish")


def wait_reasons(kapi: KubeApi, namespace: str, name: str,
                 predicate: Callable[[list[str]], bool], *, what: str = "events",
                 timeout: float = 30) -> list[str]:
    """The event reasons, once ``predicate`` holds for them. The operator posts a step's
    events just after persisting its status, so a test that saw the status waits for them."""
    def check() -> list[str] | None:
        reasons = [e["reason"] for e in events_of(kapi, namespace, name)]
        return reasons if predicate(reasons) else None

    return wait_for(check, timeout=timeout, what=what)


@dataclass
class SecretWitness:
    """Watches one Secret and checks the slot invariants on every change it sees.

    * a version number always maps to the same value (never generated twice),
    * once ``current`` exists it never disappears (invariant 1),
    * at most two slots hold a value (invariant 3),
    * ``current``'s version never goes down (invariant 4).
    """

    api: client.ApiClient
    namespace: str
    name: str
    values: dict[int, bytes] = field(default_factory=dict)
    currents: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    slots_seen: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _see(self, secret: dict[str, Any]) -> None:
        remember_secret(secret)
        data = secret.get("data") or {}
        annotations = secret["metadata"].get("annotations") or {}
        filled = 0
        for slot in ("current", "next", "previous"):
            version = annotations.get(f"keyrotor.io/{slot}-version")
            if slot not in data or version is None:
                continue
            filled += 1
            self.slots_seen.add(slot)
            value = base64.b64decode(data[slot])
            known = self.values.setdefault(int(version), value)
            if known != value:
                self.problems.append(f"version {version} had two different values")
        if filled > 2:
            self.problems.append(f"{filled} slots filled at once")
        current = annotations.get("keyrotor.io/current-version")
        if current is None and self.currents:
            self.problems.append("current disappeared")
        elif current is not None:
            if self.currents and int(current) < self.currents[-1]:
                self.problems.append(f"current went back from {self.currents[-1]} to {current}")
            if not self.currents or self.currents[-1] != int(current):
                self.currents.append(int(current))

    def _run(self, since: str) -> None:
        core = client.CoreV1Api(self.api)
        while not self._stop.is_set():
            w = watch.Watch()
            # From a known resourceVersion, resumed where the last stream stopped: no change
            # of the Secret is missed.
            for event in w.stream(core.list_namespaced_secret, self.namespace,
                                  field_selector=f"metadata.name={self.name}",
                                  resource_version=since, timeout_seconds=2):
                obj = event["raw_object"]
                since = obj["metadata"]["resourceVersion"]
                if event["type"] in ("ADDED", "MODIFIED"):
                    self._see(obj)
                if self._stop.is_set():
                    w.stop()

    def start(self) -> SecretWitness:
        listed = client.CoreV1Api(self.api).list_namespaced_secret(
            self.namespace, field_selector=f"metadata.name={self.name}")
        for item in listed.items:
            self._see(self.api.sanitize_for_serialization(item))
        since = listed.metadata.resource_version
        self._thread = threading.Thread(target=self._run, args=(since,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)


@dataclass
class SwitchableConsumer:
    """An HTTP consumer that answers 200 or 401 as the test says."""

    healthy: bool = True
    requests: int = 0
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(status=200 if self.healthy else 401)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/", self._handle)
        self._runner, port = await serve(app)
        return f"http://127.0.0.1:{port}/"

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()


def decoy_report(port: int, body: dict[str, Any], **headers: str) -> tuple[int, dict[str, Any]]:
    """POST a decoy report to an operator's health port: its status and JSON answer."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/decoy-reports", data=json.dumps(body).encode(),
        method="POST", headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())
