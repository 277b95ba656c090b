"""The ``http`` consumer probe: one request that must succeed with the version under test.

``{{ candidate }}`` in the URL, the headers or the body is the version being verified;
``{{ current }}``, ``{{ next }}`` and ``{{ previous }}`` are the slots' values. Messages never
carry a secret: any slot value that shows up in an error (a URL in an exception, say) is
replaced by ``[redacted]`` before it reaches status, events or logs.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from keyrotor.engine.durations import parse_duration
from keyrotor.engine.model import ConsumerResult

_PLACEHOLDER = re.compile(r"\{\{\s*(candidate|current|next|previous)\s*\}\}")


def render(template: str, values: dict[str, str]) -> str:
    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"{{{{ {name} }}}} has no value now")
        return values[name]

    return _PLACEHOLDER.sub(sub, template)


def redact(text: str, values: dict[str, str]) -> str:
    """``text`` without any secret value of ``values`` (version numbers are not secret: hiding
    them turned "127.0.0.1:5991" into "1[redacted]7.0.0.1:599[redacted]1")."""
    secret = [v for k, v in values.items() if v and not k.endswith("_version")]
    for value in sorted(secret, key=len, reverse=True):
        text = text.replace(value, "[redacted]")
    return text


@dataclass(frozen=True)
class HttpProbe:
    name: str
    url: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: str | None = None
    expect_status: tuple[int, ...] = (200,)
    timeout: float = 5.0
    ca_bundle: str | None = None
    insecure: bool = False

    @classmethod
    def from_spec(cls, consumer: dict[str, Any]) -> HttpProbe:
        http = consumer["http"]
        return cls(
            name=consumer["name"],
            url=http["url"],
            method=http.get("method", "GET"),
            headers=tuple((http.get("headers") or {}).items()),
            body=http.get("body"),
            expect_status=tuple(http.get("expectStatus") or (200,)),
            timeout=parse_duration(http.get("timeout", "5s"),
                                   field=f"spec.consumers[{consumer['name']}].http.timeout"),
            ca_bundle=http.get("caBundle"),
            insecure=bool(http.get("insecureSkipTLSVerify", False)),
        )

    def _ssl(self) -> ssl.SSLContext | bool:
        if self.insecure:
            return False
        if self.ca_bundle:
            return ssl.create_default_context(cadata=self.ca_bundle)
        return True

    async def check(self, session: aiohttp.ClientSession,
                    values: dict[str, str]) -> ConsumerResult:
        try:
            url = render(self.url, values)
            headers = {k: render(v, values) for k, v in self.headers}
            body = render(self.body, values) if self.body is not None else None
            async with session.request(
                self.method, url, headers=headers, data=body, ssl=self._ssl(),
                timeout=aiohttp.ClientTimeout(total=self.timeout), allow_redirects=False,
            ) as response:
                status = response.status
        except KeyError as exc:
            return ConsumerResult(self.name, False, str(exc.args[0]))
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            reason = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc)
            message = f"request failed: {reason or type(exc).__name__}"
            return ConsumerResult(self.name, False, redact(message, values))
        expected = ", ".join(str(s) for s in self.expect_status)
        if status in self.expect_status:
            return ConsumerResult(self.name, True, f"HTTP {status}")
        return ConsumerResult(self.name, False, f"HTTP {status} (expected {expected})")


class Probe(Protocol):
    """A consumer check: ``values`` holds the slots' texts, ``candidate`` and
    ``candidate_version``."""

    @property
    def name(self) -> str: ...

    async def check(self, session: aiohttp.ClientSession,
                    values: dict[str, str]) -> ConsumerResult: ...


async def probe_all(probes: Sequence[Probe],
                    values: dict[str, str]) -> tuple[ConsumerResult, ...]:
    """Probe every consumer concurrently."""
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(p.check(session, values) for p in probes))
    return tuple(results)
