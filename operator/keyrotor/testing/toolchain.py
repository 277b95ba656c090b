"""Finding and building the binaries of the local control plane.

keyrotor's tests and demo run against a real ``kube-apiserver`` and ``etcd`` (and use a real
``kubectl``), built from Go modules by the small wrapper module in ``tests/envtest``: these
machines reach the Go module proxy but cannot download release binaries.

The build is keyed by a hash of the wrapper's ``go.mod`` and ``go.sum``, so it happens once per
change of the wrapper and is shared by every checkout on the machine. Binaries land in
``$KEYROTOR_CACHE/envtest/<hash>/`` (default ``~/.cache/keyrotor``); Go's own module and build
caches stay wherever Go keeps them (outside the repository). ``KEYROTOR_ENVTEST_BIN`` points at a
folder of prebuilt binaries and skips the build entirely.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# What each binary is built from, inside the wrapper module.
PACKAGES: dict[str, str] = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
    "etcd": "go.etcd.io/etcd/server/v3",
}


class ToolchainError(RuntimeError):
    """A binary is missing and cannot be built here; the message says what to do."""


@dataclass(frozen=True)
class Binaries:
    kube_apiserver: Path
    etcd: Path
    kubectl: Path

    @classmethod
    def in_dir(cls, folder: Path) -> Binaries:
        return cls(
            kube_apiserver=folder / "kube-apiserver",
            etcd=folder / "etcd",
            kubectl=folder / "kubectl",
        )

    def missing(self) -> list[Path]:
        return [p for p in (self.kube_apiserver, self.etcd, self.kubectl) if not p.is_file()]


def cache_root() -> Path:
    return Path(os.environ.get("KEYROTOR_CACHE", Path.home() / ".cache" / "keyrotor"))


def repo_root() -> Path:
    """The checkout this package runs from (source trees and editable installs)."""
    # operator/keyrotor/testing/toolchain.py -> repository root
    return Path(__file__).resolve().parents[3]


def envtest_source() -> Path:
    """The wrapper module: ``$KEYROTOR_ENVTEST_SRC`` or ``tests/envtest`` of this checkout."""
    if env := os.environ.get("KEYROTOR_ENVTEST_SRC"):
        return Path(env)
    return repo_root() / "tests" / "envtest"


def _source_hash(src: Path) -> str:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((src / name).read_bytes())
    return digest.hexdigest()[:16]


def _k8s_version(src: Path) -> str:
    for line in (src / "go.mod").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "k8s.io/kubernetes":
            return parts[1]
    return "v0.0.0"


def _log(message: str) -> None:
    print(f"[keyrotor toolchain] {message}", file=sys.stderr, flush=True)


def ensure_binaries(*, build: bool = True) -> Binaries:
    """Return the control-plane binaries, building them first if they are not cached yet."""
    if prebuilt := os.environ.get("KEYROTOR_ENVTEST_BIN"):
        found = Binaries.in_dir(Path(prebuilt))
        if missing := found.missing():
            raise ToolchainError(f"KEYROTOR_ENVTEST_BIN={prebuilt} lacks {missing}")
        return found

    src = envtest_source()
    if not (src / "go.mod").is_file():
        raise ToolchainError(
            f"no envtest wrapper module at {src}; set KEYROTOR_ENVTEST_SRC to a checkout's "
            "tests/envtest or KEYROTOR_ENVTEST_BIN to a folder with kube-apiserver, etcd, kubectl"
        )
    out = cache_root() / "envtest" / _source_hash(src)
    found = Binaries.in_dir(out)
    if not found.missing():
        return found
    if not build:
        raise ToolchainError(f"control-plane binaries not built yet in {out}")

    out.mkdir(parents=True, exist_ok=True)
    # One builder at a time per machine: a second caller waits, then finds the binaries.
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not found.missing():
            return found
        _build(src, out)
    if missing := found.missing():
        raise ToolchainError(f"build finished but {missing} are absent")
    return found


def _build(src: Path, out: Path) -> None:
    go = shutil.which("go")
    if go is None:
        raise ToolchainError("Go is not installed; the control plane is built from Go modules")
    version = _k8s_version(src)
    ldflags = (
        f"-s -w -X k8s.io/component-base/version.gitVersion={version} "
        f"-X k8s.io/component-base/version.gitMajor=1 "
        f"-X k8s.io/component-base/version.gitMinor={version.split('.')[1]} "
        f"-X k8s.io/client-go/pkg/version.gitVersion={version}"
    )
    env = {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    for name, package in PACKAGES.items():
        started = time.monotonic()
        _log(f"building {name} from {package} (cached after the first time) ...")
        tmp = out / f".{name}.tmp"
        subprocess.run(
            [go, "build", "-ldflags", ldflags, "-o", str(tmp), package],
            cwd=src,
            env=env,
            check=True,
        )
        tmp.rename(out / name)
        _log(f"built {name} in {time.monotonic() - started:.0f}s")


def main() -> None:
    found = ensure_binaries()
    print(found.kube_apiserver.parent)


if __name__ == "__main__":
    main()
