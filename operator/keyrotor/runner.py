"""``keyrotor run``: start the operator (kopf) with keyrotor's handlers and metrics."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence

import kopf

from keyrotor import metrics


def run(*, namespaces: Sequence[str] = (), metrics_port: int = 8080,
        liveness_port: int | None = 8081, log_format: str = "text", verbose: bool = False,
        kubeconfig: str | None = None, stop_flag: asyncio.Event | None = None,
        phase_pause: float = 0.0, restart_debounce: float | None = None) -> None:
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON if log_format == "json"
                   else kopf.LogFormat.PLAIN)
    logging.getLogger("kopf.objects").setLevel(logging.INFO if verbose else logging.WARNING)
    import keyrotor.handlers  # registers the handlers with kopf

    keyrotor.handlers.PHASE_PAUSE = phase_pause
    if restart_debounce is not None:
        keyrotor.handlers.RESTART_WINDOW = restart_debounce

    if metrics_port:
        metrics.serve(metrics_port)
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None,
        stop_flag=stop_flag,
    )
