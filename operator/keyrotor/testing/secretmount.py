"""A Secret mounted the way kubelet mounts it, for consumers running outside a cluster.

No kubelet runs next to the local control plane, so :class:`SecretMirror` plays its part:
it polls the Secret every ``period`` seconds (kubelet's sync lag) and writes each change with
:class:`KubeletMount`, which copies kubelet's AtomicWriter: files are links into ``..data``,
a link to a timestamped folder that is swapped atomically; the old folder is then deleted.
Consumers read it with :mod:`keyrotor.client`, exactly as they would in a pod.
"""

from __future__ import annotations

import base64
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class KubeletMount:
    """Writes Secret updates into ``root`` the way kubelet's AtomicWriter does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.generation = 0

    def write(self, data: dict[str, bytes]) -> None:
        self.generation += 1
        folder = self.root / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{self.generation:06d}"
        folder.mkdir()
        for key, value in data.items():
            (folder / key).write_bytes(value)
        data_link = self.root / "..data"
        old = os.readlink(data_link) if data_link.is_symlink() else None
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(folder.name)
        os.replace(tmp, data_link)  # the atomic swap
        for key in data:
            link = self.root / key
            if not link.is_symlink():
                link.symlink_to(Path("..data") / key)
        for stale in self.root.iterdir():
            if stale.is_symlink() and stale.name not in data and not stale.name.startswith(".."):
                stale.unlink()
        if old:
            shutil.rmtree(self.root / old, ignore_errors=True)


class SecretMirror:
    """Keeps a :class:`KubeletMount` in step with one Secret, ``period`` seconds behind."""

    def __init__(self, read_secret: Callable[[], dict[str, Any] | None], root: Path, *,
                 period: float = 0.5) -> None:
        self.read_secret = read_secret
        self.mount = KubeletMount(root)
        self.period = period
        self._seen: dict[str, str] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"mirror-{root}")

    def sync(self) -> bool:
        """Copy the Secret if it changed; True when it exists."""
        secret = self.read_secret()
        if secret is None:
            return False
        data = dict(secret.get("data") or {})
        if data != self._seen:
            self.mount.write({k: base64.b64decode(v) for k, v in data.items()})
            self._seen = data
        return True

    def start(self) -> SecretMirror:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.sync()
            except Exception:  # noqa: S112 - a flaky read is retried next period
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
