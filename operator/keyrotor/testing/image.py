"""The operator's container image, built and run for real on a machine with no registry.

1. **Base.** Both ``FROM`` lines of the Dockerfile name ``docker.io/library/debian:bookworm-slim``,
   which cannot be pulled here. ``mmdebstrap`` builds the same Debian release's root filesystem
   (variant ``minbase``, with the dpkg path excludes of the official slim image) from Debian's
   packages, and ``podman import`` stores it under that exact name. The tarball and the imported
   image's id are cached in ``$KEYROTOR_CACHE/image/`` once per :class:`BaseRecipe`; podman keeps
   the image in its own storage.
2. **Build.** ``podman build --isolation chroot`` builds the Dockerfile, reusing podman's layer
   cache. A CA bundle (``$PIP_CERT``, ``$SSL_CERT_FILE`` or Debian's) goes in as build secret
   ``ca-certificates`` for a proxy that intercepts TLS; the image does not keep it. The build
   stage is tagged ``<tag>-build``; after a build that made a new image, podman's dangling
   images built by podman/buildah (label ``io.buildah.version``: here, superseded builds'
   layers) are pruned, so the cache holds one build's layers, not one per change of the code.
3. **Run.** Containers cannot start on these machines (crun's setrlimit is refused; cgroups are
   in hybrid mode), so :func:`chroot_argv` runs the image's entrypoint the way a runtime would,
   minus the isolation: in a private mount namespace, the image's filesystem (``podman image
   mount``) bound read-only as the root, a host folder on ``/tmp`` (the pod's emptyDir), the
   image's environment, working directory and user (``chroot --userspec``).

``python -m keyrotor.testing.image`` builds the image (base first) and prints its tag and size.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from keyrotor import __version__
from keyrotor.testing.toolchain import cache_root, repo_root

BASE_NAME = "docker.io/library/debian:bookworm-slim"
IMAGE_TAG = f"localhost/keyrotor:{__version__}"
TOOLS = {"podman": "podman", "mmdebstrap": "mmdebstrap", "unshare": "util-linux",
         "chroot": "coreutils", "mount": "mount"}


class ImageError(RuntimeError):
    """The image could not be made or built; the message says why and what to install."""


def _log(message: str) -> None:
    print(f"[keyrotor image] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class BaseRecipe:
    """What makes the base image: Debian's release, mirrors, variant and dpkg options.

    Like ``debian:bookworm-slim``: ``minbase`` (the Essential and required packages and apt),
    no manual pages, documentation other than copyright files, or translations.
    """

    name: str = BASE_NAME
    release: str = "bookworm"
    variant: str = "minbase"
    mirrors: tuple[str, ...] = (
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
    )
    dpkg_options: tuple[str, ...] = (
        "path-exclude=/usr/share/man/*",
        "path-exclude=/usr/share/doc/*",
        "path-include=/usr/share/doc/*/copyright",
        "path-exclude=/usr/share/locale/*",
        "path-exclude=/usr/share/info/*",
    )
    include: tuple[str, ...] = ()
    # As the official image: PATH set, a shell by default.
    changes: tuple[str, ...] = (
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        'CMD ["bash"]',
    )

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image's configuration a runtime uses to start it."""

    id: str
    size: int
    user: str
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    workdir: str
    labels: dict[str, str]
    exposed_ports: list[str] = field(default_factory=list)

    @property
    def uid_gid(self) -> tuple[int, int]:
        user, _, group = self.user.partition(":")
        if not user.isdigit() or not (group or user).isdigit():
            raise ImageError(f"image user {self.user!r} is not numeric uid:gid")
        return int(user), int(group or user)


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    config: ImageConfig
    base_seconds: float
    build_seconds: float


def image_dir() -> Path:
    folder = cache_root() / "image"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def require_tools() -> None:
    if missing := [f"{tool} (Debian package {package})" for tool, package in TOOLS.items()
                   if shutil.which(tool) is None]:
        raise ImageError(f"missing {', '.join(missing)}: scripts/lib/bootstrap.sh installs them")


@contextlib.contextmanager
def _locked(*, shared: bool = False) -> Iterator[None]:
    """One maker or builder at a time per machine, and none while an image is mounted (a
    build removes the image it supersedes); a second caller waits, then finds the result."""
    with open(image_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield


def _run(argv: Sequence[str], *, log: Path | None = None, what: str) -> str:
    """Run ``argv``; its output goes to ``log`` when given. A failure shows the output's tail."""
    started = time.monotonic()
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    output = result.stdout + result.stderr
    if log is not None:
        log.write_text(output)
    if result.returncode != 0:
        tail = "\n".join(output.splitlines()[-40:])
        raise ImageError(f"{what} failed (exit {result.returncode}, "
                         f"{time.monotonic() - started:.0f}s): {' '.join(argv)}\n{tail}")
    return result.stdout


def from_images(dockerfile: Path) -> list[str]:
    """The images the Dockerfile's ``FROM`` lines name (not its own earlier stages)."""
    stages: set[str] = set()
    images: list[str] = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if not words or words[0].upper() != "FROM":
            continue
        words = [w for w in words[1:] if not w.startswith("--")]
        if not words:
            continue
        if words[0] not in stages:
            images.append(words[0])
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2])
    return images


def image_id(ref: str) -> str | None:
    result = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", ref],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() or None if result.returncode == 0 else None


def ensure_base(recipe: BaseRecipe | None = None) -> str:
    """The base image under ``recipe.name``, made and imported once per recipe; its id."""
    recipe = recipe or BaseRecipe()
    require_tools()
    folder = image_dir()
    key = recipe.key()
    tarball, id_file = folder / f"base-{key}.tar", folder / f"base-{key}.id"
    with _locked():
        stored = id_file.read_text().strip() if id_file.is_file() else None
        if stored and image_id(recipe.name) == stored:
            return stored
        if not tarball.is_file():
            started = time.monotonic()
            _log(f"making {recipe.name} with mmdebstrap ({recipe.release}, {recipe.variant}; "
                 f"once per recipe, cached in {folder}) ...")
            for old in folder.glob("base-*"):  # an earlier recipe's tarball and id
                old.unlink()
            partial = folder / f".base-{key}.tar"
            _run(["mmdebstrap", f"--variant={recipe.variant}", "--mode=root", "--format=tar",
                  *(f"--dpkgopt={option}" for option in recipe.dpkg_options),
                  *([f"--include={','.join(recipe.include)}"] if recipe.include else []),
                  recipe.release, str(partial), *recipe.mirrors],
                 log=folder / "mmdebstrap.log", what="mmdebstrap")
            partial.rename(tarball)
            _log(f"made the base root filesystem in {time.monotonic() - started:.0f}s "
                 f"({tarball.stat().st_size / 2**20:.0f} MiB)")
        started = time.monotonic()
        changes = [arg for change in recipe.changes for arg in ("--change", change)]
        _run(["podman", "import", "--quiet", *changes, str(tarball), recipe.name],
             what="podman import")
        imported = image_id(recipe.name)
        if imported is None:
            raise ImageError(f"podman import did not make {recipe.name}")
        id_file.write_text(imported + "\n")
        _log(f"imported {recipe.name} ({imported[:12]}) in {time.monotonic() - started:.1f}s")
        return imported


def _ca_bundle() -> Path | None:
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                      "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def inspect(ref: str) -> ImageConfig:
    out = _run(["podman", "image", "inspect", ref], what=f"podman image inspect {ref}")
    data: dict[str, Any] = json.loads(out)[0]
    config: dict[str, Any] = data.get("Config") or {}
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    return ImageConfig(
        id=str(data["Id"]), size=int(data["Size"]), user=str(config.get("User") or "0:0"),
        env=env, entrypoint=list(config.get("Entrypoint") or []),
        cmd=list(config.get("Cmd") or []), workdir=str(config.get("WorkingDir") or "/"),
        labels=dict(config.get("Labels") or {}),
        exposed_ports=sorted(config.get("ExposedPorts") or {}))


def build(tag: str = IMAGE_TAG, *, context: Path | None = None,
          dockerfile: Path | None = None) -> BuiltImage:
    """Make every base the Dockerfile names, then build it with podman's layer cache."""
    context = context or repo_root()
    dockerfile = dockerfile or context / "Dockerfile"
    require_tools()
    started = time.monotonic()
    recipe = BaseRecipe()
    for name in dict.fromkeys(from_images(dockerfile)):
        if name != recipe.name:
            raise ImageError(f"{dockerfile} names base {name}: only {recipe.name} can be made "
                             "here (no registry)")
        ensure_base(recipe)
    base_seconds = time.monotonic() - started
    previous = image_id(tag)
    secret = _ca_bundle()
    log = image_dir() / "build.log"
    _log(f"building {tag} from {dockerfile} (podman build --isolation chroot, layer cache; "
         f"log in {log}) ...")
    started = time.monotonic()
    common = ["podman", "build", "--isolation", "chroot", "--layers",
              *(["--secret", f"id=ca-certificates,src={secret}"] if secret else []),
              "--file", str(dockerfile)]
    with _locked():
        _run([*common, "--tag", tag, str(context)], log=log, what="podman build")
        build_seconds = time.monotonic() - started
        config = inspect(tag)
        # Keep the layer cache bounded: the build stage gets a tag of its own (all cached,
        # a few seconds), so that it survives while superseded builds' layers go.
        if config.id != previous:
            _run([*common, "--target", "build", "--tag", f"{tag}-build", str(context)],
                 what="podman build --target build")
            subprocess.run(["podman", "image", "prune", "--force", "--filter",
                            "label=io.buildah.version"], capture_output=True, check=False)
    _log(f"built {tag} ({config.id[:12]}, {config.size / 1e6:.0f} MB) in {build_seconds:.1f}s "
         f"(base {base_seconds:.1f}s)")
    return BuiltImage(tag=tag, config=config, base_seconds=base_seconds,
                      build_seconds=build_seconds)


@contextlib.contextmanager
def mounted(ref: str) -> Iterator[Path]:
    """The image's root filesystem, mounted by podman (read-only use only)."""
    with _locked(shared=True):
        path = Path(_run(["podman", "image", "mount", ref], what="podman image mount").strip())
        try:
            yield path
        finally:
            subprocess.run(["podman", "image", "unmount", ref], capture_output=True,
                           check=False)


def prepare_tmp(folder: Path, config: ImageConfig) -> Path:
    """A host folder to serve as the container's ``/tmp``: sticky, world-writable (as an
    emptyDir is), and owned by the image's user."""
    folder.mkdir(parents=True, exist_ok=True)
    uid, gid = config.uid_gid
    os.chown(folder, uid, gid)
    folder.chmod(0o1777)
    return folder


def put_file(tmp: Path, name: str, content: bytes, config: ImageConfig) -> str:
    """Write ``content`` into the container's ``/tmp``, readable by its user only; the path
    the container sees."""
    path = tmp / name
    path.write_bytes(content)
    uid, gid = config.uid_gid
    os.chown(path, uid, gid)
    path.chmod(0o600)
    return f"/tmp/{name}"  # noqa: S108 - the path inside the container


# Runs as root in a fresh mount namespace: the image's root bound read-only, /tmp from the host,
# /proc and /dev as a runtime provides them, then exec into the container's process.
_SETUP = """set -eu
root="$1"; tmp="$2"; shift 2
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount --bind "$tmp" "$root/tmp"
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
exec "$@"
"""


def chroot_argv(rootfs: Path, config: ImageConfig, args: Sequence[str] | None = None, *,
                tmp: Path, entrypoint: Sequence[str] | None = None,
                env: dict[str, str] | None = None) -> list[str]:
    """The command that runs the image's entrypoint with ``args`` (default: its CMD) from
    ``rootfs`` as the image's user, with its environment (plus ``env``) and working directory,
    the root read-only and ``tmp`` on ``/tmp``. The process keeps the pid of the command, so a
    signal to it reaches the container's process; the image's ``setpriv`` makes it die with
    its parent (the change of user cleared what :func:`~keyrotor.testing.processes.spawn`
    set), so a killed test run leaves no operator behind."""
    uid, gid = config.uid_gid
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    variables = [f"{k}={v}" for k, v in {**config.env, **(env or {})}.items()]
    command = [*(config.entrypoint if entrypoint is None else entrypoint),
               *(config.cmd if args is None else args)]
    return ["unshare", "--mount", "--propagation", "private", "--",
            "/bin/sh", "-c", _SETUP, "setup", str(rootfs), str(tmp),
            "/usr/bin/env", "-i", *variables,
            chroot, f"--userspec={uid}:{gid}", f"--groups={gid}", str(rootfs),
            "/usr/bin/setpriv", "--pdeathsig", "KILL",
            "/usr/bin/env", f"--chdir={config.workdir}", "--", *command]


def rootfs_bytes(rootfs: Path) -> int:
    """The apparent size of every regular file and symlink under ``rootfs`` (as ``du -sb``)."""
    total = 0
    for folder, dirs, files in os.walk(rootfs):
        for name in [*files, *dirs]:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _main(argv: list[str]) -> int:
    if argv and argv[0] not in ("build",):
        print("usage: python -m keyrotor.testing.image [build]", file=sys.stderr)
        return 2
    built = build()
    print(f"{built.tag} {built.config.id[:12]} {built.config.size}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))


__all__ = ["BASE_NAME", "IMAGE_TAG", "BaseRecipe", "BuiltImage", "ImageConfig", "ImageError",
           "build", "chroot_argv", "ensure_base", "from_images", "inspect", "mounted",
           "prepare_tmp", "put_file"]
