"""Starting, waiting for and stopping the real servers the tests use (one process group each).

Every server dies with the process that started it (PR_SET_PDEATHSIG), so a killed test run
leaves nothing behind; servers that refuse to run as root (PostgreSQL) run as a system user.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1


class ServerError(RuntimeError):
    """A server did not come up; the message carries the tail of its log."""


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: the kernel sends SIGKILL when the parent dies.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(argv: Sequence[str], log: Path, *, env: dict[str, str] | None = None,
          user: str | None = None, attached: bool = True) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group, output appended to ``log``; as ``user`` when
    we are root and ``user`` is given; dying with us unless not ``attached``."""
    account = pwd.getpwnam(user) if user and os.geteuid() == 0 else None

    def prepare() -> None:
        if attached:
            _die_with_parent()
        if account is not None:
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)

    with open(log, "ab") as out:
        return subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=prepare, env={**os.environ, **(env or {})})


def give_to(path: Path, user: str | None) -> None:
    """Make ``path`` (recursively) owned by ``user`` when we are root."""
    if not user or os.geteuid() != 0:
        return
    account = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files, "."]:
            os.chown(os.path.join(root, name), account.pw_uid, account.pw_gid)


def wait_until(check: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, what: str,
               timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise ServerError(f"{what} exited with {proc.returncode}:\n{tail}")
        if check():
            return
        time.sleep(0.1)
    raise ServerError(f"{what} not ready within {timeout:.0f}s; log {log}")


def stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
