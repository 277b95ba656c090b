"""A demo consumer pair for tests and the demo: an acceptor service and a presenter client.

No kubelet runs in the local control plane, so both read the Secret through the API, each on
its own refresh period: that models kubelet updating mounted Secrets at different moments
(``lag``), which is exactly what the rotation protocol must survive.

* :class:`Acceptor` is an HTTP service that accepts ``Authorization: Bearer <key>`` when the key
  is whatever ``current``, ``next`` or ``previous`` held the last time it looked.
* :class:`Presenter` sends requests with whatever ``current`` held the last time it looked,
  and counts rejections.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

SLOTS = ("current", "next", "previous")


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on a free loopback port; return its runner (to clean up) and the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    port: int = sock.getsockname()[1]
    return runner, port
SecretReader = Callable[[], dict[str, Any] | None]


def read_slots(secret: dict[str, Any] | None) -> dict[str, bytes]:
    data = (secret or {}).get("data") or {}
    return {slot: base64.b64decode(data[slot]) for slot in SLOTS if slot in data}


@dataclass
class Acceptor:
    read_secret: SecretReader
    lag: float = 0.0
    accepted: int = 0
    rejected: int = 0
    _keys: dict[str, bytes] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    _refresher: asyncio.Task[None] | None = None
    port: int = 0

    async def _refresh_forever(self) -> None:
        while True:
            self._keys = read_slots(await asyncio.to_thread(self.read_secret))
            await asyncio.sleep(max(self.lag, 0.05))

    async def _check(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").encode()
        # Compare against every held key in constant time, whatever matches first.
        ok = False
        for key in self._keys.values():
            ok |= hmac.compare_digest(token, key)
        if ok:
            self.accepted += 1
            return web.Response(text="accepted")
        self.rejected += 1
        return web.Response(status=401, text="rejected")

    async def start(self) -> str:
        self._keys = read_slots(await asyncio.to_thread(self.read_secret))
        app = web.Application()
        app.router.add_get("/", self._check)
        self._runner, self.port = await serve(app)
        self._refresher = asyncio.create_task(self._refresh_forever())
        return f"http://127.0.0.1:{self.port}/"

    @property
    def slots_held(self) -> set[str]:
        """The slots this acceptor currently knows (as of its last refresh)."""
        return set(self._keys)

    async def stop(self) -> None:
        if self._refresher:
            self._refresher.cancel()
        if self._runner:
            await self._runner.cleanup()


@dataclass
class Presenter:
    read_secret: SecretReader
    url: str
    lag: float = 0.0
    period: float = 0.05
    sent: int = 0
    rejected: int = 0
    versions_seen: set[bytes] = field(default_factory=set)
    _task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        key = b""
        refreshed = 0.0
        async with aiohttp.ClientSession() as session:
            while True:
                if time.monotonic() - refreshed >= self.lag:
                    slots = read_slots(await asyncio.to_thread(self.read_secret))
                    key = slots.get("current", key)
                    refreshed = time.monotonic()
                if key:
                    self.versions_seen.add(key)
                    async with session.get(self.url, headers={
                            "Authorization": f"Bearer {key.decode()}"}) as response:
                        self.sent += 1
                        if response.status != 200:
                            self.rejected += 1
                await asyncio.sleep(self.period)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
