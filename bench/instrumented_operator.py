"""``python instrumented_operator.py run ...``: the operator (``python -m keyrotor``) with
instruments the benchmarks need before the operator has them itself.

* Event-loop lag probe (keyrotor.looplag) started on the operator's loop, when
  $KEYROTOR_LOOP_LAG=1: wraps ``keyrotor.runner._main``; when that is gone (the runner changed)
  the operator runs unchanged and the lag reads "not measured". Used by
  ``keygen_lag.py --wrap-lag-probe``.
* tracemalloc top 20, when Python traces allocations ($PYTHONTRACEMALLOC=N): on SIGUSR1 the
  operator writes the biggest allocation sites (by file and line, and by file) to
  $KEYROTOR_TRACEMALLOC_OUT. Used by ``burst.py --tracemalloc``. Tracing costs CPU and memory
  itself: RSS under tracing is not comparable with RSS without.
* kopf settings overridden after keyrotor's own ``configure()``, from $KEYROTOR_BENCH_SETTINGS
  (JSON, e.g. ``{"watching.chunk_size": 500}``): compares settings on one code version.
  Used by ``restart.py --settings``.
* ``malloc_trim(0)`` on SIGUSR2 (glibc: return freed heap pages to the system), so a benchmark
  can measure how much of the RSS is freed memory glibc kept. Used by ``restart.py --trim``.
"""

from __future__ import annotations

import os
import signal
import sys
import tracemalloc
from types import FrameType
from typing import Any

OUT_ENV = "KEYROTOR_TRACEMALLOC_OUT"


def top_allocations(limit: int = 20) -> str:
    snapshot = tracemalloc.take_snapshot().filter_traces([
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
        tracemalloc.Filter(False, "<unknown>")])
    traced, peak = tracemalloc.get_traced_memory()
    lines = [f"traced now {traced / 1e6:.1f} MB, traced peak {peak / 1e6:.1f} MB", "",
             f"top {limit} by file and line:"]
    lines += [f"{s.size / 1e6:8.2f} MB {s.count:8d} blocks  {s.traceback}"
              for s in snapshot.statistics("lineno")[:limit]]
    if tracemalloc.get_traceback_limit() > 1:
        lines += ["", "top 3 by traceback (innermost last):"]
        for stat in snapshot.statistics("traceback")[:3]:
            lines += [f"{stat.size / 1e6:8.2f} MB {stat.count:8d} blocks",
                      *(f"    {line}" for line in stat.traceback.format()[-16:])]
    lines += ["", f"top {limit} by file:"]
    lines += [f"{s.size / 1e6:8.2f} MB {s.count:8d} blocks  {s.traceback}"
              for s in snapshot.statistics("filename")[:limit]]
    text = "\n".join(lines) + "\n"
    # Shorter paths: site-packages and the standard library by their own names.
    for path in sorted({p for p in sys.path if p.endswith("site-packages")}, key=len,
                       reverse=True):
        text = text.replace(path + "/", "")
    return text.replace(os.path.dirname(os.__file__) + "/", "stdlib/")


def dump_on_signal() -> None:
    out = os.environ.get(OUT_ENV)
    if not out or not tracemalloc.is_tracing():
        return

    def dump(_signum: int, _frame: FrameType | None) -> None:
        text = top_allocations()
        with open(out + ".tmp", "w") as f:
            f.write(text)
        os.replace(out + ".tmp", out)

    signal.signal(signal.SIGUSR1, dump)


def wrap_lag_probe() -> None:
    if os.environ.get("KEYROTOR_LOOP_LAG", "") not in ("1", "true", "yes"):
        return
    from keyrotor import looplag, runner

    original = getattr(runner, "_main", None)
    if original is None:
        return

    async def _main(**kwargs: Any) -> Any:
        task = looplag.start()
        try:
            return await original(**kwargs)
        finally:
            task.cancel()

    runner._main = _main  # a seam for benchmarks only


def override_settings() -> None:
    raw = os.environ.get("KEYROTOR_BENCH_SETTINGS")
    if not raw:
        return
    import json

    import kopf

    from keyrotor import handlers  # registers keyrotor's configure() first

    assert handlers.configure

    @kopf.on.startup()
    def bench_settings(settings: kopf.OperatorSettings, **_: Any) -> None:
        for dotted, value in json.loads(raw).items():
            section, name = dotted.split(".")
            setattr(getattr(settings, section), name, value)


def trim_on_signal() -> None:
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    signal.signal(signal.SIGUSR2, lambda _signum, _frame: libc.malloc_trim(0))


if __name__ == "__main__":
    # Set $KUBECONFIG first, as `keyrotor run --kubeconfig` does before importing kopf.
    if "--kubeconfig" in sys.argv:
        os.environ["KUBECONFIG"] = sys.argv[sys.argv.index("--kubeconfig") + 1]
    try:  # as `keyrotor run` does, before kopf is imported (override_settings imports it)
        from keyrotor import kubehttp

        kubehttp.keep_official_client_out()
    except ImportError:  # an older keyrotor
        pass
    dump_on_signal()
    wrap_lag_probe()
    trim_on_signal()
    override_settings()
    from keyrotor import cli

    cli.main()
