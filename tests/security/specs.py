"""Hypothesis strategies for RotatingSecret specs: valid, nearly valid and hostile.

The generator walks the CRD's own openAPIV3Schema (crds/keyrotor.io_rotatingsecrets.yaml), so
every field, every generator, consumer and target kind, and the new ``spec.emergency`` and
``spec.decoys`` are covered without a hand-kept list. At each node it mostly draws a value the
schema allows (an enum member, an integer in range, a duration, a URL), and sometimes a
hostile one: a wrong type, a huge or negative number, an odd duration ("1h-5m", "0s",
"99999999h"), unicode, an empty string; required fields go missing now and then, and the
"exactly one of" objects (generator, target, consumers, vault auth) get none or two kinds.
Specs from examples/ are mixed in, whole or with one field replaced by a hostile value.
"""

from __future__ import annotations

import copy
import functools
import math
from typing import Any

import yaml
from hypothesis import strategies as st

from keyrotor.testing.toolchain import repo_root

DURATION_FIELDS = frozenset({"every", "minOverlap", "maxOverlap", "interval", "delay",
                             "requestTTL", "timeout", "activateAfter"})
URL_FIELDS = frozenset({"url", "address"})
# Objects whose CEL rule asks for exactly one of these properties.
ONE_OF = {
    "spec.generator": ("random", "symmetric", "keyPair", "vault", "hsm"),
    "spec.generator.vault": ("kv", "transit"),
    "spec.generator.vault.auth": ("tokenSecretRef", "kubernetes"),
    "spec.target": ("postgres", "webhook"),
    "spec.consumers[]": ("http", "transit", "prometheus", "postgres", "target"),
}
GOOD_DURATIONS = ("500ms", "1s", "15s", "90s", "1m", "10m", "1h30m", "24h", "720h", "1.5h")
ODD_DURATIONS = ("1h-5m", "0s", "0ms", "99999999h", "9" * 30 + "h", "-5m", "5", "5M", "1d",
                 "1w", "PT5M", "", " ", "10m ", "\uff11h", "∞h", "1e3s", "0.0000001ms", "h",
                 "1h1h1h1h1h1h", "100ms", "87600h", "87601h", "3650d")
HOSTILE: tuple[Any, ...] = (
    None, "", " ", "\x00", "日本語🔑", "a" * 5000, -1, 0, 1, 2**31, 2**63, -(2**63), 10**30,
    1.5, -0.0, 1e308, True, False, [], [None], [1, "x"], {}, {"x": 1}, {"": ""},
    "${HOME}", "{{ candidate }}", "' OR 1=1 --", "../../etc/passwd",
)
UNICODE = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@functools.cache
def spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load((repo_root() / "crds" / "keyrotor.io_rotatingsecrets.yaml")
                         .read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return dict(schema["properties"]["spec"])


@functools.cache
def example_specs() -> tuple[dict[str, Any], ...]:
    found = []
    for path in sorted((repo_root() / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "RotatingSecret":
                found.append(doc["spec"])
    return tuple(found)


def _string(name: str, node: dict[str, Any], odd: bool) -> st.SearchStrategy[Any]:
    """A string for field ``name``: one that fits, or (``odd``) one that nearly does."""
    if "enum" in node:
        return st.sampled_from(node["enum"])
    if name in DURATION_FIELDS:
        return st.sampled_from(ODD_DURATIONS if odd else GOOD_DURATIONS)
    if name in URL_FIELDS:
        return st.sampled_from(("ftp://x", "http://", "https://ü.example", "127.0.0.1:9")
                               if odd else ("http://127.0.0.1:9", "https://svc.ns.svc:8443/p",
                                            "http://[::1]:1/",
                                            "http://127.0.0.1:9/{{ candidate }}"))
    if name == "schedule":
        return st.sampled_from(("61 * * * *", "0 0 31 2 *", "* * * *", "@never",
                                "0 0 1 1 * 2030", "L W # ? *", "0 0 30 2 *") if odd else
                               ("0 3 * * 1", "@daily", "@hourly", "*/5 * * * *",
                                "0 3 * * MON-FRI"))
    if name in ("secretName", "name"):
        return st.sampled_from(("UPPER", "-x", "a..b", "x" * 300)) if odd else \
            st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?\Z")
    if name == "expect":
        return st.sampled_from(("=0", "== abc", "", "== 1e9", "==")) if odd else \
            st.sampled_from(("== 0", "< 0.01", ">= -1"))
    if name == "alphabet":
        return st.one_of(st.sampled_from(("aa", "a", "ééé✓")), UNICODE) if odd else \
            st.sampled_from(("ab", "abcdef0123456789", "ACGT"))
    return UNICODE if odd else st.from_regex(r"\A[a-z][-a-z0-9_]{0,15}\Z")


@st.composite
def _value(draw: st.DrawFn, node: dict[str, Any], path: str, name: str, odds: int) -> Any:
    """A value for ``node``; ``odds`` (per thousand) of hostile or odd choices at each node."""
    def chance() -> bool:
        return odds > 0 and draw(st.integers(0, 999)) < odds

    if chance():  # hostile, whatever the schema says
        return copy.deepcopy(draw(st.one_of(st.sampled_from(HOSTILE), UNICODE)))
    kind = node.get("type")
    if kind == "object":
        return draw(_object(node, path, odds))
    if kind == "array":
        items = node.get("items") or {"type": "string"}
        most = min(int(node.get("maxItems", 4)), 4)
        least = int(node.get("minItems", 0))
        if chance():
            least, most = 0, most + 2  # too few or too many
        if name == "consumers":
            items = {**items, "x-unique-names": True}
        found = draw(st.lists(_value(items, path + "[]", name, odds),
                              min_size=min(least, most), max_size=most))
        if name == "consumers" and not chance():  # names are the list's keys
            found = [{**c, "name": f"c{i}"} if isinstance(c, dict) else c
                     for i, c in enumerate(found)]
        return found
    if kind == "integer":
        low, high = node.get("minimum", 0), node.get("maximum", 2**31)
        if chance():
            return draw(st.sampled_from((low - 1, high + 1, -1, 2**63, 10**30)))
        return draw(st.integers(low, high))
    if kind == "boolean":
        return draw(st.sampled_from(("true", 1, "yes"))) if chance() else draw(st.booleans())
    return draw(_string(name, node, chance()))


@st.composite
def _object(draw: st.DrawFn, node: dict[str, Any], path: str, odds: int) -> dict[str, Any]:
    props: dict[str, Any] = node.get("properties") or {}
    if not props:  # free-form (http.headers) or empty (consumers[].target)
        if node.get("additionalProperties"):
            return draw(st.dictionaries(st.from_regex(r"\A[A-Za-z-]{1,12}\Z"),
                                        st.one_of(UNICODE, st.just("Bearer {{ candidate }}")),
                                        max_size=3))
        return {}
    required = set(node.get("required") or ())
    names = [k for k in props if k not in ONE_OF.get(path, ())]
    chosen: list[str] = []
    odd = odds > 0 and draw(st.integers(0, 999)) < odds * 3
    if path in ONE_OF:
        kinds = ONE_OF[path]
        how_many = draw(st.sampled_from((0, 2))) if odd else 1
        chosen = draw(st.lists(st.sampled_from(kinds), min_size=how_many, max_size=how_many,
                               unique=True))
    missing = draw(st.sampled_from(sorted(required))) if odd and required else None
    out: dict[str, Any] = {}
    for key in names + chosen:
        keep = key in chosen or (key in required and key != missing) or \
            draw(st.integers(0, 9)) < 4
        if keep:
            out[key] = draw(_value(props[key], f"{path}.{key}", key, odds))
    if odd and draw(st.booleans()):
        out[draw(st.sampled_from(("unknownField", "Every", "x-y")))] = copy.deepcopy(draw(
            st.sampled_from(HOSTILE)))
    return out


def _set_path(spec: dict[str, Any], path: list[str], value: Any) -> None:
    here: Any = spec
    for key in path[:-1]:
        if not isinstance(here, dict):
            return
        here = here.setdefault(key, {})
    if isinstance(here, dict):
        if value is _DELETE:
            here.pop(path[-1], None)
        else:
            here[path[-1]] = value


_DELETE = object()
_PATHS = (["secretName"], ["generator"], ["strategy"], ["rotation"], ["rotation", "every"],
          ["rotation", "minOverlap"], ["rotation", "maxOverlap"], ["rotation", "schedule"],
          ["rotation", "suspend"], ["verification", "interval"],
          ["verification", "successesRequired"], ["verification", "failureThreshold"],
          ["revocation", "delay"], ["revocation", "keepHistory"], ["emergency"],
          ["emergency", "approvals"], ["emergency", "requestTTL"], ["decoys"],
          ["decoys", "count"], ["consumers"], ["target"], ["target", "activateAfter"],
          ["rolloutRestartTargets"], ["deletionPolicy"])


@st.composite
def mutated_example(draw: st.DrawFn) -> dict[str, Any]:
    """An example's spec, as is or with a few fields replaced, removed or made odd."""
    spec = copy.deepcopy(draw(st.sampled_from(example_specs())))
    for _ in range(draw(st.integers(0, 3))):
        path = list(draw(st.sampled_from(_PATHS)))
        if path[-1] in DURATION_FIELDS:
            value = draw(st.one_of(st.sampled_from(ODD_DURATIONS), st.sampled_from(HOSTILE)))
        else:
            value = draw(st.one_of(st.sampled_from(HOSTILE), st.just(_DELETE)))
        _set_path(spec, path, copy.deepcopy(value) if value is not _DELETE else value)
    return spec


def generated(odds: int) -> st.SearchStrategy[dict[str, Any]]:
    """Schema-driven specs with ``odds`` per thousand of a hostile or odd choice at each node
    (0: every value fits the schema; CEL rules between fields may still fail)."""
    return _object(spec_schema(), "spec", odds)


def specs() -> st.SearchStrategy[dict[str, Any]]:
    """Specs for the campaigns: valid, nearly valid (a few odd values) and hostile ones
    generated from the schema, and examples with fields made hostile."""
    return st.one_of(generated(0), generated(0), generated(8), generated(60),
                     mutated_example())


def json_safe(value: Any) -> Any:
    """``value`` with what JSON cannot carry (NaN, infinities) replaced: the API server takes
    JSON only, so the cluster half sends what a client could send."""
    if isinstance(value, float) and not math.isfinite(value):
        return 0
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def fixed(count: int, seed_value: int = 20261203) -> list[dict[str, Any]]:
    """``count`` specs, the same every time: hypothesis only generates (no shrinking, no
    example database) from a fixed seed. Run it in a fresh interpreter with PYTHONHASHSEED=0
    (``python -m tests.security.specs COUNT``): hypothesis mixes in constants from the modules
    loaded so far, in set order, so the process's history and hash seed would change them."""
    from hypothesis import HealthCheck, Phase, given, seed, settings

    drawn: list[dict[str, Any]] = []

    @seed(seed_value)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(specs())
    def collect(spec: dict[str, Any]) -> None:
        drawn.append(json_safe(spec))

    collect()
    return drawn[:count]


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(fixed(int(sys.argv[1]))))
