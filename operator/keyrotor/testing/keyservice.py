"""A reference service for the webhook target contract (docs/webhook-target.md).

It keeps API keys in memory and protects ``GET /api`` with them. Its management API is the
contract keyrotor's ``webhook`` target speaks, behind a bearer token:

* ``PUT /keys/{version}`` ``{"key": ...}``: register a key. In ``two`` mode older keys stay
  valid (GitHub-style); in ``one`` mode the new key replaces every other (Auth0-style).
* ``POST /keys/check`` ``{"key": ...}``: 200 when valid, 401 when not.
* ``DELETE /keys/{version}``: 204, or 404 when there is no such version.

``GET /keys`` lists the versions held (never the keys), for tests and operators.
Run: ``python -m keyrotor.testing.keyservice --mode one --port 8080 --token-file t``.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class KeyService:
    mode: str  # "one" or "two"
    token: str
    keys: dict[int, bytes] = field(default_factory=dict)
    api_accepted: int = 0
    api_rejected: int = 0

    def _valid(self, presented: bytes) -> bool:
        ok = False
        for key in self.keys.values():
            ok |= hmac.compare_digest(presented, key)
        return ok

    def _admin(self, request: web.Request) -> None:
        presented = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(presented.encode(), self.token.encode()):
            raise web.HTTPUnauthorized(text="management token required")

    async def put_key(self, request: web.Request) -> web.Response:
        self._admin(request)
        version = int(request.match_info["version"])
        key = str((await request.json())["key"]).encode()
        if self.mode == "one":
            self.keys = {version: key}
        else:
            self.keys[version] = key
        return web.json_response({"version": version, "versions": sorted(self.keys)})

    async def check_key(self, request: web.Request) -> web.Response:
        self._admin(request)
        key = str((await request.json())["key"]).encode()
        return web.json_response({"valid": True}) if self._valid(key) else \
            web.json_response({"valid": False}, status=401)

    async def delete_key(self, request: web.Request) -> web.Response:
        self._admin(request)
        version = int(request.match_info["version"])
        if self.keys.pop(version, None) is None:
            raise web.HTTPNotFound(text=f"no key version {version}")
        return web.Response(status=204)

    async def list_keys(self, request: web.Request) -> web.Response:
        return web.json_response({"versions": sorted(self.keys), "mode": self.mode,
                                  "accepted": self.api_accepted,
                                  "rejected": self.api_rejected})

    async def api(self, request: web.Request) -> web.Response:
        presented = request.headers.get("Authorization", "").removeprefix("Bearer ").encode()
        if presented and self._valid(presented):
            self.api_accepted += 1
            return web.Response(text="ok")
        self.api_rejected += 1
        return web.Response(status=401, text="invalid key")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_put("/keys/{version:[0-9]+}", self.put_key)
        app.router.add_post("/keys/check", self.check_key)
        app.router.add_delete("/keys/{version:[0-9]+}", self.delete_key)
        app.router.add_get("/keys", self.list_keys)
        app.router.add_get("/api", self.api)
        return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("one", "two"), default="two")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-file", required=True)
    args = parser.parse_args()
    with open(args.token_file) as f:
        token = f.read().strip()
    service = KeyService(mode=args.mode, token=token)
    web.run_app(service.app(), host="127.0.0.1", port=args.port, print=None,
                access_log=None, loop=asyncio.new_event_loop())


if __name__ == "__main__":
    main()
