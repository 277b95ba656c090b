"""The operator's container image, built for real and run from its own filesystem.

No registry is reachable and containers cannot start here (see keyrotor.testing.image): the
base is made with mmdebstrap, the Dockerfile built with ``podman build --isolation chroot``,
and the image's entrypoint runs under chroot as the image's user, with the root read-only and
a host folder on /tmp, against the local control plane, through one full rotation.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from keyrotor import __version__
from keyrotor.kube import KubeApi
from keyrotor.testing import image
from keyrotor.testing.controlplane import ControlPlane, free_port
from keyrotor.testing.processes import spawn
from keyrotor.testing.toolchain import repo_root
from keyrotor.testing.waiting import wait_for
from tests.operator.conftest import _scan_for_leaks, remember_secret, rotating_secret
from tests.operator.helpers import SwitchableConsumer, await_status, wait_reasons

DOCKERFILE = repo_root() / "Dockerfile"


def fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return ""


@pytest.fixture(scope="module")
def built() -> image.BuiltImage:
    started = time.monotonic()
    result = image.build()
    print(f"image ready in {time.monotonic() - started:.1f}s (base {result.base_seconds:.1f}s, "
          f"build {result.build_seconds:.1f}s), {result.config.size / 1e6:.0f} MB")
    return result


@pytest.fixture(scope="module")
def rootfs(built: image.BuiltImage) -> Iterator[Path]:
    with image.mounted(built.tag) as root:
        yield root


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_image_configuration(built: image.BuiltImage) -> None:
    assert image.from_images(DOCKERFILE) == [image.BASE_NAME, image.BASE_NAME]
    config = built.config
    assert config.user == "65532:65532"
    assert (config.entrypoint, config.cmd) == (["keyrotor"], ["run"])
    assert config.env["HOME"] == "/tmp" and config.env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert config.env["PATH"].startswith("/opt/venv/bin:")
    assert "DEBIAN_FRONTEND" not in config.env
    assert config.exposed_ports == ["8080/tcp", "8081/tcp"]
    labels = config.labels
    assert labels["org.opencontainers.image.title"] == "keyrotor"
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.base.name"] == image.BASE_NAME


# Run inside the image as its user: who it is, what it can import, find and write. Every
# module of keyrotor must import: a runtime dependency declared only in the dev extras, or a
# part of a dependency the Dockerfile strips (kubernetes.aio), would show here.
INSPECT = r"""
import importlib, importlib.util, json, os, pkgutil, pwd, shutil
import keyrotor
unimportable = {}
for module in pkgutil.walk_packages(keyrotor.__path__, "keyrotor."):
    if not module.name.endswith(".__main__"):
        try:
            importlib.import_module(module.name)
        except Exception as e:
            unimportable[module.name] = repr(e)
written = {}
for path in ("/opt/venv/probe", "/etc/probe", "/usr/probe", "/probe", "/tmp/probe"):
    try:
        with open(path, "w") as f:
            f.write("x")
        written[path] = "ok"
    except OSError as e:
        written[path] = e.strerror
print(json.dumps({
    "ids": [os.getuid(), os.getgid(), os.getgroups()],
    "user": pwd.getpwuid(os.getuid()).pw_name, "cwd": os.getcwd(),
    "modules": {m: importlib.util.find_spec(m) is not None
                for m in ("pip", "setuptools", "ensurepip", "wheel", "keyrotor", "kopf")},
    "tools": {t: shutil.which(t) for t in ("gcc", "cc", "c++", "make", "pip", "pip3",
                                           "keyrotor", "python3")},
    "written": written,
    "unimportable": unimportable,
}))
"""


def test_runtime_only_non_root_read_only(built: image.BuiltImage, rootfs: Path,
                                         tmp_path: Path) -> None:
    tmp = image.prepare_tmp(tmp_path / "container-tmp", built.config)
    result = subprocess.run(
        image.chroot_argv(rootfs, built.config, ["-c", INSPECT], tmp=tmp,
                          entrypoint=["python3"]),
        capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["ids"] == [65532, 65532, [65532]] and facts["user"] == "nonroot"
    assert facts["cwd"] == "/tmp"
    assert facts["modules"] == {"pip": False, "setuptools": False, "ensurepip": False,
                                "wheel": False, "keyrotor": True, "kopf": True}
    assert facts["tools"] == {"gcc": None, "cc": None, "c++": None, "make": None, "pip": None,
                              "pip3": None, "keyrotor": "/opt/venv/bin/keyrotor",
                              "python3": "/opt/venv/bin/python3"}
    assert facts["written"] == {"/opt/venv/probe": "Read-only file system",
                                "/etc/probe": "Read-only file system",
                                "/usr/probe": "Read-only file system",
                                "/probe": "Read-only file system", "/tmp/probe": "ok"}
    assert (tmp / "probe").read_text() == "x"
    assert facts["unimportable"] == {}
    # And seen from outside: no compiler, no pip anywhere in the final stage.
    site = rootfs / "opt/venv/lib/python3.11/site-packages"
    assert not list(site.glob("pip*")) and not list(site.glob("setuptools*"))
    assert not list((rootfs / "usr/bin").glob("gcc*"))
    assert not (rootfs / "usr/lib/python3.11/ensurepip").exists()


def self_contained_kubeconfig(plane: ControlPlane) -> bytes:
    """The admin context only, its CA inlined: the container sees no host path."""
    config = yaml.safe_load(plane.kubeconfig.read_text())
    for cluster in config["clusters"]:
        ca = Path(cluster["cluster"].pop("certificate-authority"))
        cluster["cluster"]["certificate-authority-data"] = base64.b64encode(
            ca.read_bytes()).decode()
    config["users"] = [u for u in config["users"] if u["name"] == "admin"]
    config["contexts"] = [c for c in config["contexts"] if c["name"] == "admin"]
    config["current-context"] = "admin"
    return yaml.safe_dump(config).encode()


def process_facts(pid: int) -> tuple[list[str], str, list[str]]:
    """A process's real, effective, saved and fs uids, its root and its first 3 arguments."""
    uids = next(line.split()[1:] for line in Path(f"/proc/{pid}/status").read_text()
                .splitlines() if line.startswith("Uid:"))
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return uids, os.readlink(f"/proc/{pid}/root"), argv[:3]


async def test_operator_from_the_image_rotates_a_secret(
        built: image.BuiltImage, rootfs: Path, control_plane: ControlPlane, crds: None,
        kapi: KubeApi, namespace: str, tmp_path: Path) -> None:
    config = built.config
    tmp = image.prepare_tmp(tmp_path / "container-tmp", config)
    kubeconfig = image.put_file(tmp, "kubeconfig", self_contained_kubeconfig(control_plane),
                                config)
    metrics_port, liveness_port = free_port(), free_port()
    log = tmp_path / "operator.log"
    consumer = SwitchableConsumer()
    url = await consumer.start()
    # As the chart runs it: leader election on, the pod's name and namespace from the
    # downward API.
    pod = {"POD_NAME": "keyrotor-image-0", "POD_NAMESPACE": namespace}
    proc = spawn(image.chroot_argv(
        rootfs, config, ["run", "--kubeconfig", kubeconfig, "-n", namespace,
                         "--metrics-port", str(metrics_port),
                         "--liveness-port", str(liveness_port), "--leader-elect", "--verbose"],
        tmp=tmp, env=pod), log)
    metrics_text = ""
    try:
        def serving() -> bool:
            assert proc.poll() is None, log.read_text()[-5000:]
            return f'keyrotor_build_info{{version="{__version__}"}} 1.0' in fetch(
                f"http://127.0.0.1:{metrics_port}/metrics")

        await asyncio.to_thread(wait_for, serving, timeout=60,
                                what="the operator's metrics from the image")
        # The process serving them is the image's entrypoint, as the image's user, in its root.
        assert process_facts(proc.pid) == (
            ["65532"] * 4, str(rootfs), ["/opt/venv/bin/python3", "/opt/venv/bin/keyrotor",
                                         "run"])
        control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=rotating_secret(
            "from-image", rotation={"minOverlap": "1s", "maxOverlap": "1m"},
            generator={"random": {"length": 24, "encoding": "hex"}},
            consumers=[{"name": "api", "http": {
                "url": url, "headers": {"Authorization": "Bearer {{ candidate }}"}}}],
            verification={"interval": "300ms", "successesRequired": 2}))
        await await_status(kapi, namespace, "from-image",
                           lambda s: s.get("currentVersion") == 1 and s.get("phase") == "Idle",
                           what="version 1")
        first = kapi.get_secret(namespace, "from-image")
        remember_secret(first)
        kapi.annotate_rotating_secret(namespace, "from-image", "keyrotor.io/rotate", "image")
        status = await await_status(
            kapi, namespace, "from-image",
            lambda s: s.get("rotationCount") == 1 and s.get("phase") == "Idle",
            within=60, what="one full rotation")
        assert status["currentVersion"] == 2 and status.get("previousVersion") is None
        after = kapi.get_secret(namespace, "from-image")
        remember_secret(after)
        assert after is not None and first is not None
        assert after["data"]["current"] != first["data"]["current"]
        assert "previous" not in after["data"] and "next" not in after["data"]
        assert consumer.requests >= 4  # two rounds of acceptance and of retirement, at least
        await asyncio.to_thread(wait_reasons, kapi, namespace, "from-image",
                                lambda r: "Revoked" in r, what="the Revoked event")
        assert fetch(f"http://127.0.0.1:{liveness_port}/healthz")
        metrics_text = fetch(f"http://127.0.0.1:{metrics_port}/metrics")
        assert "keyrotor_rotations_total{" in metrics_text
        assert "keyrotor_leader 1.0" in metrics_text
        lease = json.loads(control_plane.kubectl(
            "get", "lease", "keyrotor", "-n", namespace, "-o", "json").stdout)
        assert lease["spec"]["holderIdentity"] == pod["POD_NAME"]
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        await consumer.stop()
    text = log.read_text(errors="replace")
    print(f"---- operator log from the image ({log}) ----\n{text[-8000:]}")
    print(f"the operator left in /tmp: {sorted(p.name for p in tmp.iterdir())}")
    assert "Read-only file system" not in text
    assert proc.returncode == 0, f"exit {proc.returncode}"
    _scan_for_leaks(control_plane, namespace, text, metrics_text)
