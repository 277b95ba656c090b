"""Real consumer processes built on :mod:`keyrotor.client`, for the zero-downtime tests.

* ``acceptor``: an HTTP service that accepts ``Authorization: Bearer <key>`` when
  :meth:`RotatingSecret.verify` finds the key in any slot of its mounted Secret; a refusal's
  body says why (``rejected``, ``decoy``, ``limited``); ``X-Client-Id`` is the identity rate
  limiting keys on. Decoys are reported to ``$KEYROTOR_REPORT_URL`` when set.
* ``presenter``: a client that sends a request every ``--period`` seconds with whatever
  ``current`` holds at that moment; with ``--fallback`` it uses
  :meth:`RotatingSecret.call_with_fallback` (OneKey: retry with ``previous`` on a 401).

Both serve the library's ``keyrotor_client_*`` metrics on ``--metrics-port``. The presenter
writes its own tally (requests sent, failed, by slot) to ``--stats`` as JSON twice a second
and on SIGTERM: a failed request there is one the application saw fail.

Run: ``python -m keyrotor.testing.consumerapp presenter --mount DIR --url URL ...``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests
from aiohttp import web
from prometheus_client import start_http_server

from keyrotor.client import SLOTS, Rejected, RotatingSecret


def _digest(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()[:8]


def _held(secret: RotatingSecret) -> dict[str, str]:
    """Slot -> "version:digest" of what ``secret`` holds now (diagnostics, no values)."""
    files = secret.files()
    return {slot: f"{secret.version(slot)}:{_digest(files[slot])}"
            for slot in SLOTS if files.get(slot)}


def _acceptor(args: argparse.Namespace) -> None:
    secret = RotatingSecret(args.mount, refresh=0.1)

    async def check(request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        # X-Client-Id: the identity rate limiting keys on (absent: no limit applies).
        slot = secret.verify(token, identity=request.headers.get("X-Client-Id"))
        # A refusal names itself ("decoy", "limited"), as an application's log would.
        if slot:
            return web.Response(text=slot)
        # Why it was refused, for a failing test to show: what this acceptor held (versions
        # and short digests, never values) and a digest of what was presented.
        print(json.dumps({"t": round(time.time(), 3), "refused": _digest(token.encode()),
                          "held": _held(secret)}), flush=True)
        return web.Response(status=401, text="rejected" if slot is None else str(slot))

    app = web.Application()
    app.router.add_get("/", check)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


def _presenter(args: argparse.Namespace) -> None:
    secret = RotatingSecret(args.mount, refresh=0.1)
    tally: Counter[str] = Counter()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stats = Path(args.stats)
    session = requests.Session()

    def send(key: bytes) -> str:
        response = session.get(args.url, headers={"Authorization": f"Bearer {key.decode()}"},
                               timeout=5)
        if response.status_code == 401:
            raise Rejected("HTTP 401")
        response.raise_for_status()
        return response.text

    def write() -> None:
        tmp = stats.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(tally)))
        os.replace(tmp, stats)

    last = 0.0
    while not stop.is_set():
        presented = b""
        try:
            if args.fallback:
                secret.call_with_fallback(send)
            else:
                presented = secret.current()
                send(presented)
            tally["ok"] += 1
        except Exception as exc:  # every failure is counted and shown
            tally["failed"] += 1
            tally[f"error:{type(exc).__name__}"] += 1
            print(json.dumps({"t": round(time.time(), 3), "failed": type(exc).__name__,
                              "presented": _digest(presented), "held": _held(secret)}), flush=True)
        tally["sent"] += 1
        if time.monotonic() - last > 0.5:
            write()
            last = time.monotonic()
        stop.wait(args.period)
    write()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    acceptor = sub.add_parser("acceptor")
    acceptor.add_argument("--port", type=int, required=True)
    presenter = sub.add_parser("presenter")
    presenter.add_argument("--url", required=True)
    presenter.add_argument("--period", type=float, default=0.02)
    presenter.add_argument("--fallback", action="store_true")
    presenter.add_argument("--stats", required=True)
    for p in (acceptor, presenter):
        p.add_argument("--mount", required=True)
        p.add_argument("--metrics-port", type=int, required=True)
    args = parser.parse_args(argv)
    start_http_server(args.metrics_port, addr="127.0.0.1")
    runners: dict[str, Any] = {"acceptor": _acceptor, "presenter": _presenter}
    runners[args.role](args)


if __name__ == "__main__":
    main()
