"""``python lagprobe_operator.py run ...``: the operator (``python -m keyrotor``) with the
event-loop lag probe (keyrotor.looplag) started on its loop, for measuring an operator whose
runner does not start the probe itself yet. Wraps ``keyrotor.runner._main``; when that is
gone (the runner changed), runs the operator unchanged and the lag reads "not measured".

Used by ``keygen_lag.py --wrap-lag-probe``.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def wrap() -> None:
    # keyrotor.runner imports kopf, which imports the kubernetes client, which reads
    # $KUBECONFIG once at import: set it first, as `keyrotor run --kubeconfig` does later.
    if "--kubeconfig" in sys.argv:
        os.environ["KUBECONFIG"] = sys.argv[sys.argv.index("--kubeconfig") + 1]
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


if __name__ == "__main__":
    wrap()
    from keyrotor import cli

    cli.main()
