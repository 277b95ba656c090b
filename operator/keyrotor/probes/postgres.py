"""The ``postgres`` consumer probe: log in with the version under test and run ``SELECT 1``.

The user name is the candidate's own (``<slot>.username``, as the postgres target publishes
it) unless ``username`` fixes one; the password is the candidate's value.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp

from keyrotor.engine.model import ConsumerResult
from keyrotor.targets.postgres import Server


@dataclass(frozen=True)
class PostgresProbe:
    name: str
    server: Server
    username: str | None = None

    @classmethod
    def from_spec(cls, consumer: dict[str, Any]) -> PostgresProbe:
        spec = consumer["postgres"]
        return cls(name=consumer["name"], server=Server.from_spec(spec),
                   username=spec.get("username"))

    async def check(self, session: aiohttp.ClientSession,
                    values: dict[str, str]) -> ConsumerResult:
        user = self.username or values.get("candidate_username")
        if not user:
            return ConsumerResult(self.name, False, "no user name: the Secret has no "
                                  "<slot>.username; set consumers[].postgres.username")
        ok, message = await asyncio.to_thread(self.server.login, user, values["candidate"])
        return ConsumerResult(self.name, ok, message)
