"""The ``prometheus`` consumer probe: a PromQL query whose value must satisfy a comparison.

This is how the fleet is asked, rather than one service: "failures with the previous version
== 0" over the consumer library's metrics. The query may use ``{{ candidate_version }}`` and
``{{ previous_version }}``. An instant query must return exactly one number (a scalar, or a
vector of one sample): an empty result fails with a hint, because "no series" more often means
"nothing is scraped" than "no failures" (write ``sum(...) or vector(0)`` to mean zero).
"""

from __future__ import annotations

import math
import operator
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from keyrotor.engine.durations import parse_duration
from keyrotor.engine.model import ConsumerResult
from keyrotor.errors import SpecError

_EXPECT = re.compile(r"^\s*(==|!=|<=|>=|<|>)\s*(-?[0-9]+(?:\.[0-9]+)?)\s*$")
_OPS: dict[str, Callable[[float, float], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
    ">": operator.gt, ">=": operator.ge,
}
_PLACEHOLDER = re.compile(r"\{\{\s*(candidate_version|previous_version)\s*\}\}")


def parse_expect(text: str, field: str) -> tuple[str, float]:
    match = _EXPECT.match(text)
    if not match:
        raise SpecError(field, f"{text!r} is not a comparison; write e.g. '== 0' or '< 0.01'")
    return match.group(1), float(match.group(2))


@dataclass(frozen=True)
class PrometheusProbe:
    name: str
    url: str
    query: str
    op: str
    threshold: float
    timeout: float = 5.0
    ca_bundle: str | None = None

    @classmethod
    def from_spec(cls, consumer: dict[str, Any]) -> PrometheusProbe:
        spec, name = consumer["prometheus"], consumer["name"]
        op, threshold = parse_expect(spec.get("expect", "== 0"),
                                     f"spec.consumers[{name}].prometheus.expect")
        return cls(name=name, url=spec["url"].rstrip("/"), query=spec["query"], op=op,
                   threshold=threshold, ca_bundle=spec.get("caBundle"),
                   timeout=parse_duration(spec.get("timeout", "5s"),
                                          field=f"spec.consumers[{name}].prometheus.timeout"))

    def render(self, values: dict[str, str]) -> str:
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), self.query)

    async def check(self, session: aiohttp.ClientSession,
                    values: dict[str, str]) -> ConsumerResult:
        query = self.render(values)
        tls: ssl.SSLContext | bool = (ssl.create_default_context(cadata=self.ca_bundle)
                                      if self.ca_bundle else True)
        try:
            async with session.get(f"{self.url}/api/v1/query", params={"query": query},
                                   ssl=tls, timeout=aiohttp.ClientTimeout(total=self.timeout)
                                   ) as response:
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return ConsumerResult(self.name, False,
                                  f"Prometheus query failed: {type(exc).__name__}")
        if body.get("status") != "success":
            return ConsumerResult(self.name, False,
                                  f"Prometheus rejected the query: {body.get('error', body)}")
        value = _single_value(body.get("data") or {})
        if isinstance(value, str):
            return ConsumerResult(self.name, False, value)
        shown = f"{value:g}"
        expected = f"{self.op} {self.threshold:g}"
        if not math.isnan(value) and _OPS[self.op](value, self.threshold):
            return ConsumerResult(self.name, True, f"query = {shown} ({expected})")
        return ConsumerResult(self.name, False, f"query = {shown}, expected {expected}")


def _single_value(data: dict[str, Any]) -> float | str:
    """The query's one number, or a message saying why there is none."""
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        return float(result[1])  # type: ignore[index]
    if kind == "vector":
        if not result:
            return ("the query returned no series (is the consumer scraped? for "
                    "'no failures' write sum(...) or vector(0))")
        if len(result) > 1:
            return f"the query returned {len(result)} series; aggregate it to one (sum, max)"
        return float(result[0]["value"][1])
    return f"the query returned a {kind}; use an instant vector or a scalar"
