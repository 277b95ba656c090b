"""Shared by the benchmarks: append a dated, attributed result block to bench/RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), " \
           f"{mem:.0f} GiB, Python {platform.python_version()}"


def code() -> str:
    """Which keyrotor was measured: its folder and commit. A snapshot made with
    ``git archive`` (to measure a commit while the work tree changes) carries a COMMIT file."""
    import keyrotor

    folder = Path(keyrotor.__file__).resolve().parent.parent
    marker = folder.parent / "COMMIT"
    if marker.exists():
        return f"commit {marker.read_text().strip()} (snapshot in {folder})"

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                              text=True, check=False).stdout.strip()

    dirty = git("status", "--porcelain", "--", ".")
    return f"commit {git('rev-parse', '--short', 'HEAD') or 'unknown'} ({folder})" + (
        " plus uncommitted changes" if dirty else "")


def record(title: str, lines: list[str]) -> None:
    """Print the block; append it to RESULTS.md unless $KEYROTOR_BENCH_DRY is set."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    block = [f"## {title}", "", f"- date: {stamp}", f"- machine: {machine()}",
             f"- command: `{command}`", f"- keyrotor: {code()}", "", *lines, ""]
    text = "\n".join(block)
    print(text)
    if os.environ.get("KEYROTOR_BENCH_DRY"):
        return
    existing = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    RESULTS.write_text(existing + text + "\n")
