"""Finding and building the Go binaries of the real servers the tests and the demo use.

These machines reach the Go module proxy but cannot download release binaries, so each server
is built from its Go module by a small wrapper module in this repository:

* ``tests/envtest``: ``kube-apiserver`` and ``kubectl`` (k8s.io/kubernetes) and ``etcd``;
* ``tests/vault``: ``vault``, the Vault API server for the Vault/OpenBao backend tests;
* ``tests/helm``: ``helm`` (helm.sh/helm/v4), for the chart in ``helm/keyrotor``.

The prometheus-operator CRDs (ServiceMonitor, PrometheusRule) the chart's tests install come
from that project's Go module too: :func:`prometheus_operator_crds` downloads it into Go's
module cache (``go mod download``) and returns the CRD files it ships.

A build is keyed by a hash of the wrapper's ``go.mod`` and ``go.sum``, so it happens once per
change of the wrapper and is shared by every checkout on the machine. Binaries land in
``$KEYROTOR_CACHE/<set>/<hash>/`` (default ``~/.cache/keyrotor``); Go's module and build caches
stay wherever Go keeps them, outside the repository. ``KEYROTOR_ENVTEST_BIN`` and
``KEYROTOR_VAULT_BIN`` and ``KEYROTOR_HELM_BIN`` point at folders of prebuilt binaries and skip
the build.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


class ToolchainError(RuntimeError):
    """A binary is missing and cannot be built here; the message says what to do."""


def repo_root() -> Path:
    """The checkout this package runs from (source trees and editable installs)."""
    # operator/keyrotor/testing/toolchain.py -> repository root
    return Path(__file__).resolve().parents[3]


def cache_root() -> Path:
    return Path(os.environ.get("KEYROTOR_CACHE", Path.home() / ".cache" / "keyrotor"))


def _log(message: str) -> None:
    print(f"[keyrotor toolchain] {message}", file=sys.stderr, flush=True)


def _module_version(src: Path, module: str) -> str:
    for line in (src / "go.mod").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["require"]:  # a one-line `require module version`
            parts = parts[1:]
        if len(parts) >= 2 and parts[0] == module:
            return parts[1]
    return "v0.0.0"


@dataclass(frozen=True)
class GoTools:
    """One wrapper module and the binaries built from it."""

    name: str
    packages: dict[str, str]
    bin_env: str
    ldflags: str = "-s -w"
    source: Path = field(default_factory=Path)

    def folder(self, *, build: bool = True) -> Path:
        """The folder holding every binary of this set, built first if needed."""
        if prebuilt := os.environ.get(self.bin_env):
            folder = Path(prebuilt)
            if missing := self._missing(folder):
                raise ToolchainError(f"{self.bin_env}={prebuilt} lacks {missing}")
            return folder
        if not (self.source / "go.mod").is_file():
            raise ToolchainError(f"no wrapper module at {self.source}; set {self.bin_env} to "
                                 f"a folder with {', '.join(self.packages)}")
        digest = hashlib.sha256()
        for name in ("go.mod", "go.sum"):
            digest.update((self.source / name).read_bytes())
        out = cache_root() / self.name / digest.hexdigest()[:16]
        if not self._missing(out):
            return out
        if not build:
            raise ToolchainError(f"{self.name} binaries not built yet in {out}")
        out.mkdir(parents=True, exist_ok=True)
        # One builder at a time per machine: a second caller waits, then finds the binaries.
        with open(out / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._missing(out):
                self._build(out)
        if missing := self._missing(out):
            raise ToolchainError(f"build finished but {missing} are absent")
        return out

    def _missing(self, folder: Path) -> list[str]:
        return [name for name in self.packages if not (folder / name).is_file()]

    def _build(self, out: Path) -> None:
        go = shutil.which("go")
        if go is None:
            raise ToolchainError(f"Go is not installed; {self.name} is built from Go modules")
        env = {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
        for name, package in self.packages.items():
            if (out / name).is_file():
                continue
            started = time.monotonic()
            _log(f"building {name} from {package} (once; cached in {out}) ...")
            tmp = out / f".{name}.tmp"
            subprocess.run([go, "build", "-ldflags", self.ldflags, "-o", str(tmp), package],
                           cwd=self.source, env=env, check=True)
            tmp.rename(out / name)
            _log(f"built {name} in {time.monotonic() - started:.0f}s")


def _envtest() -> GoTools:
    src = Path(os.environ.get("KEYROTOR_ENVTEST_SRC", repo_root() / "tests" / "envtest"))
    version = _module_version(src, "k8s.io/kubernetes") if (src / "go.mod").is_file() \
        else "v0.0.0"
    minor = version.split(".")[1] if version.count(".") >= 2 else "0"
    return GoTools(
        name="envtest",
        source=src,
        bin_env="KEYROTOR_ENVTEST_BIN",
        packages={"kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
                  "kubectl": "k8s.io/kubernetes/cmd/kubectl",
                  "etcd": "go.etcd.io/etcd/server/v3"},
        # Make /version honest: the apiserver and kubectl report the Kubernetes release.
        ldflags=(f"-s -w -X k8s.io/component-base/version.gitVersion={version} "
                 f"-X k8s.io/component-base/version.gitMajor=1 "
                 f"-X k8s.io/component-base/version.gitMinor={minor} "
                 f"-X k8s.io/client-go/pkg/version.gitVersion={version}"),
    )


def vault_tools() -> GoTools:
    return GoTools(name="vault", source=repo_root() / "tests" / "vault",
                   bin_env="KEYROTOR_VAULT_BIN",
                   packages={"vault": "github.com/hashicorp/vault"})


def helm_tools() -> GoTools:
    src = repo_root() / "tests" / "helm"
    version = _module_version(src, "helm.sh/helm/v4") if (src / "go.mod").is_file() \
        else "v0.0.0"
    return GoTools(
        name="helm", source=src, bin_env="KEYROTOR_HELM_BIN",
        packages={"helm": "helm.sh/helm/v4/cmd/helm"},
        # As helm's Makefile does for a tagged release: `helm version` then names the release
        # (without it, only "v4.3") and the user agent says which client talks to the server.
        ldflags=(f"-s -w -X helm.sh/helm/v4/internal/version.version={version} "
                 f"-X helm.sh/helm/v4/internal/version.gitTreeState=clean"),
    )


# The release whose CRDs (example/prometheus-operator-crd/) the chart's tests install.
PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator@v0.85.0"


def prometheus_operator_crds(names: tuple[str, ...] = ("servicemonitors", "prometheusrules"),
                             ) -> list[Path]:
    """The monitoring.coreos.com CRDs of :data:`PROMETHEUS_OPERATOR`, from Go's module cache."""
    go = shutil.which("go")
    if go is None:
        raise ToolchainError("Go is not installed; the prometheus-operator CRDs come from its "
                             "Go module")
    cache_root().mkdir(parents=True, exist_ok=True)  # outside any module: a plain download
    out = subprocess.run([go, "mod", "download", "-json", PROMETHEUS_OPERATOR],
                         cwd=cache_root(), env={**os.environ, "GOTOOLCHAIN": "local"},
                         capture_output=True, text=True, check=True).stdout
    folder = Path(json.loads(out)["Dir"]) / "example" / "prometheus-operator-crd"
    files = [folder / f"monitoring.coreos.com_{name}.yaml" for name in names]
    if missing := [str(path) for path in files if not path.is_file()]:
        raise ToolchainError(f"{PROMETHEUS_OPERATOR} has no {', '.join(missing)}")
    return files


def ensure_helm(*, build: bool = True) -> Path:
    """The ``helm`` CLI, built first if it is not cached yet."""
    return helm_tools().folder(build=build) / "helm"


@dataclass(frozen=True)
class Binaries:
    kube_apiserver: Path
    etcd: Path
    kubectl: Path

    @classmethod
    def in_dir(cls, folder: Path) -> Binaries:
        return cls(kube_apiserver=folder / "kube-apiserver", etcd=folder / "etcd",
                   kubectl=folder / "kubectl")


def ensure_binaries(*, build: bool = True) -> Binaries:
    """kube-apiserver, etcd and kubectl, built first if they are not cached yet."""
    return Binaries.in_dir(_envtest().folder(build=build))


def ensure_vault(*, build: bool = True) -> Path:
    """The ``vault`` server binary, built first if it is not cached yet."""
    return vault_tools().folder(build=build) / "vault"


def main() -> None:
    if sys.argv[1:] == ["vault"]:
        print(ensure_vault().parent)
    elif sys.argv[1:] == ["helm"]:
        print(ensure_helm().parent)
    else:
        print(ensure_binaries().kube_apiserver.parent)


if __name__ == "__main__":
    main()
