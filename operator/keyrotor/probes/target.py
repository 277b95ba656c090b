"""The ``target`` consumer probe: ask the target itself whether it accepts the version."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp

from keyrotor.backends import BackendError
from keyrotor.engine.model import ConsumerResult
from keyrotor.targets import USERNAME, Target


@dataclass(frozen=True)
class TargetProbe:
    name: str
    target: Target

    async def check(self, session: aiohttp.ClientSession,
                    values: dict[str, str]) -> ConsumerResult:
        material = {"": values["candidate"].encode()}
        if "candidate_username" in values:
            material[USERNAME] = values["candidate_username"].encode()
        try:
            ok, message = await asyncio.to_thread(self.target.check, material)
        except BackendError as exc:
            return ConsumerResult(self.name, False, str(exc))
        return ConsumerResult(self.name, ok, f"{self.target.kind}: {message}")
