"""``keyrotor run``: the operator process.

In order: metrics and health endpoints; with ``--leader-elect``, wait for the Lease (a standby
serves ``/healthz`` and ``/readyz`` and writes nothing); the permission check; then kopf with
keyrotor's handlers, its per-operator state in kopf's ``memo``. A leader that cannot renew its
Lease stops kopf and exits non-zero, so its pod restarts as a standby (client-go's choice too:
continuing to reconcile without the Lease could make two writers). A graceful stop releases
the Lease so a standby takes over at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import kopf
from aiohttp import web

from keyrotor import decoys, looplag, metrics
from keyrotor.leadership import LeaderElector, LeaseConfig

log = logging.getLogger("keyrotor.runner")
LOST_LEADERSHIP_EXIT = 3


@dataclass
class Health:
    """What ``/healthz`` and ``/readyz`` answer: alive while the loop turns; ready once standing
    by or once kopf is up."""

    ready: bool = False
    role: str = "starting"  # standby, leader, or single (no election)
    # POST /v1/decoy-reports (keyrotor.decoys): 503 until start() (a standby never starts it).
    reports: decoys.DecoyReports = field(default_factory=decoys.DecoyReports)

    async def serve(self, port: int) -> web.AppRunner:
        async def healthz(_: web.Request) -> web.Response:
            # Served on kopf's own event loop: a blocked loop fails this probe.
            return web.json_response({"status": "ok", "role": self.role})

        async def readyz(_: web.Request) -> web.Response:
            return web.Response(text="ready\n" if self.ready else "starting\n",
                                status=200 if self.ready else 503)

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        self.reports.add_routes(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", port).start()  # noqa: S104 - kubelet probes it
        return runner


def run(*, namespaces: Sequence[str] = (), metrics_port: int = 8080,
        liveness_port: int | None = 8081, log_format: str = "text", verbose: bool = False,
        kubeconfig: str | None = None, stop_flag: asyncio.Event | None = None,
        phase_pause: float = 0.0, restart_debounce: float | None = None,
        lease: LeaseConfig | None = None, workers: int = 16, shard: str | None = None,
        other_shards: Sequence[str] = (), audit_log: str | None = None,
        audit_stdout: bool = True, audit_head_configmap: str | None = None) -> None:
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON if log_format == "json"
                   else kopf.LogFormat.PLAIN)
    logging.getLogger("kopf.objects").setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("keyrotor").setLevel(logging.INFO)
    code = asyncio.run(_main(namespaces=namespaces, metrics_port=metrics_port,
                             liveness_port=liveness_port, stop_flag=stop_flag,
                             phase_pause=phase_pause, restart_debounce=restart_debounce,
                             lease=lease, workers=workers, shard=shard,
                             other_shards=other_shards, audit_log=audit_log,
                             audit_stdout=audit_stdout,
                             audit_head_configmap=audit_head_configmap))
    if code:
        sys.exit(code)


async def _main(*, namespaces: Sequence[str], metrics_port: int, liveness_port: int | None,
                stop_flag: asyncio.Event | None, phase_pause: float,
                restart_debounce: float | None, lease: LeaseConfig | None,
                workers: int, shard: str | None, other_shards: Sequence[str],
                audit_log: str | None = None, audit_stdout: bool = True,
                audit_head_configmap: str | None = None) -> int:
    from keyrotor import handlers, permissions  # registers the handlers with kopf
    from keyrotor.approvals import Approvers
    from keyrotor.audit import DEFAULT_CONFIGMAP, open_audit, operator_namespace
    from keyrotor.kube import KubeApi, load_client

    if metrics_port:
        metrics.serve(metrics_port)
    # Always on (ten wake-ups a second): a loop held by blocking work delays every object.
    lag = looplag.start()
    health = Health()
    site = await health.serve(liveness_port) if liveness_port else None
    stop = stop_flag or asyncio.Event()
    stopping: list[Callable[[], Awaitable[None]]] = []
    audit = None
    # One API client for the whole process: a connection per reconcile worker, and a few
    # more for the Lease, the permission check and the Secret watch.
    api_client = load_client(pool_size=workers + 4)
    try:
        elector = None
        if lease is not None:
            from keyrotor.leadership import KubeLeases

            elector = LeaderElector(KubeLeases(api_client), lease)
            # A standby hands decoy reports on to the leader (keyrotor.decoys).
            health.reports.leader_url = elector.leader_url
            health.ready, health.role = True, "standby"  # ready: it serves by waiting
            if not await _until_stopped(elector.acquire(), stop):
                return 0
            health.role = "leader"
        else:
            metrics.LEADER.set(1)
            health.role = "single"

        # The operator's own namespace: the Lease's, and the audit chain head's.
        own_namespace = lease.namespace if lease is not None else operator_namespace()
        lacking = await asyncio.to_thread(permissions.missing, api_client, namespaces,
                                          own_namespace=own_namespace)
        permissions.report(lacking)
        # The audit trail (keyrotor.audit), opened by the leader only: one writer of the chain
        # and of its head.
        api = KubeApi(api_client)
        audit = await asyncio.to_thread(
            open_audit, file=audit_log, stdout=audit_stdout, api=api,
            namespace=own_namespace,
            configmap=audit_head_configmap if audit_head_configmap is not None else (
                f"{DEFAULT_CONFIGMAP}-shard-{shard}" if shard else DEFAULT_CONFIGMAP))
        # Emergency revocations' approvers: their TOTP seeds and state live in a Secret in the
        # operator's own namespace.
        approvers = Approvers(api, namespace=own_namespace)
        shared = handlers.Shared.create(
            api, phase_pause=phase_pause, namespaces=namespaces, workers=workers,
            shard=shard, other_shards=other_shards, audit=audit, approvals=approvers,
            **({} if restart_debounce is None else {"restart_window": restart_debounce}))
        health.ready = True
        # Leader or single: answer reports.
        health.reports.start(shared.api, namespaces, audit=audit)
        # Blocking client calls run in threads: one per worker, plus some for the rest.
        asyncio.get_running_loop().set_default_executor(
            concurrent.futures.ThreadPoolExecutor(max_workers=workers + 4,
                                                  thread_name_prefix="keyrotor-io"))
        await shared.scheduler.start()
        stopping.append(shared.scheduler.stop)
        shared.start_secret_watch()  # metadata only: wakes objects whose Secret drifted
        stopping.append(shared.stop_secret_watch)
        operator = asyncio.create_task(kopf.operator(
            standalone=True, clusterwide=not namespaces, namespaces=list(namespaces),
            stop_flag=stop, memo=kopf.Memo(shared=shared)))
        if elector is None:
            await operator
            return 0
        holder = asyncio.create_task(elector.hold())
        await asyncio.wait({operator, holder}, return_when=asyncio.FIRST_COMPLETED)
        if holder.done():
            # Leadership lost: stop reconciling at once, before anyone else may start.
            await shared.scheduler.stop()
            stop.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(operator),
                                       timeout=elector.config.renew_deadline)
            return LOST_LEADERSHIP_EXIT
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)
        await asyncio.to_thread(elector.release)
        return 0
    finally:
        for stop_it in stopping:
            await stop_it()
        if audit is not None:  # after the scheduler: no more lines; writes the final head
            await asyncio.to_thread(audit.close)
        lag.cancel()
        await asyncio.gather(lag, return_exceptions=True)
        if site is not None:
            await site.cleanup()


async def _until_stopped(work: Awaitable[None], stop: asyncio.Event) -> bool:
    """Run ``work`` (a coroutine) until it finishes (True) or SIGTERM/SIGINT or ``stop``
    arrives first (False). kopf installs its own signal handlers later, for its run."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
        for pending in (task, stopper):
            if not pending.done():
                pending.cancel()
        await asyncio.gather(task, stopper, return_exceptions=True)
    return task.done() and not task.cancelled() and task.exception() is None
