"""The suite-wide secret scan (a pytest plugin): no secret value, TOTP seed or TOTP code ever
shows up in a log, event, status, annotation, metric or audit line that the tests produced.

How it works:

* Every control plane is scanned as it stops (``keyrotor.testing.controlplane.STOP_HOOKS``),
  while its API server still answers. The secrets are every Secret's data values there
  (decoded, at least 8 bytes; public parts such as ``*.pub``, ``jwks.json``, user names and
  version numbers excepted), the values the operator tests' Secret witnesses saw on the way
  (revoked versions included), and every base32 TOTP seed in a ``keyrotor-approvers`` Secret
  with the codes it produced while the plane ran (one step either side).
* Each value is looked for as text, base64 (padded and URL-safe) and hex; a PEM key by each
  line of its body, a private JWK by each private member.
* The places: every Event, every RotatingSecret and other keyrotor.io object (status,
  annotations, spec), every ConfigMap and Lease (the audit chain head), every Secret's
  metadata (annotations, labels), and every log file the tests wrote under this process's
  pytest base temp (operator logs, ``*.audit.log``, ``audit.log``, helper logs), plus texts
  tests hand to :func:`note` (a metrics scrape, say). TOTP codes, six digits, would match any
  number by chance in a log: there they count only on a line that speaks of a code, an
  approval or TOTP; in events, annotations and status they count anywhere.
* One exception: a test's own input Secret (not keyrotor's) created with client-side
  ``kubectl apply`` carries its data in kubectl's last-applied-configuration annotation;
  that annotation is left out and the Secret named in the summary instead.
* A hit fails: the plane's stop raises, which fails the test that owned the plane (for the
  session's plane: the session, in the teardown of the worker's last test). The report names
  the place and a fingerprint (SHA-256 prefix) of the value, never the value.
* Under pytest-xdist each worker scans its own planes and files; the controller prints one
  summary line for all of them at the end.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from keyrotor.testing import controlplane
from keyrotor.testing.controlplane import ControlPlane

MIN_BYTES = 8
APPROVERS_SECRET = "keyrotor-approvers"
# Keys whose values are public or not secret at all: published anywhere by design.
PUBLIC_KEYS = re.compile(r"(^|\.)(pub|pub\.jwk|username|key-version|ca\.crt|tls\.crt)$|"
                         r"^(jwks\.json|versions\.json|username|user|host|port|url|"
                         r"ca\.crt|tls\.crt|database|module|tokenLabel)$")
TOKEN = re.compile(r"[A-Za-z0-9+/=_\-]{8,}")
CODE_CONTEXT = re.compile(r"code|approv|totp|otp", re.IGNORECASE)
LOG_NAMES = ("*.log", "*.log.*", "*.jsonl", "*.audit.log", "audit.log*")
MAX_FILE = 64 * 1024 * 1024


def fingerprint(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]


@dataclass
class Needle:
    """One form of one secret: ``text`` to look for, ``origin`` (where the secret lives, no
    value) and the fingerprint of the secret itself."""

    text: str
    origin: str
    print: str


@dataclass
class Report:
    values: int = 0
    seeds: int = 0
    codes: int = 0
    places: int = 0
    planes: int = 0
    seconds: float = 0.0
    hits: list[str] = field(default_factory=list)

    def add(self, other: Report) -> None:
        self.values += other.values
        self.seeds += other.seeds
        self.codes += other.codes
        self.places += other.places
        self.planes += other.planes
        self.seconds += other.seconds
        self.hits.extend(other.hits)

    def as_dict(self) -> dict[str, Any]:
        return {"values": self.values, "seeds": self.seeds, "codes": self.codes,
                "places": self.places, "planes": self.planes, "seconds": self.seconds,
                "hits": self.hits}


class SecretLeak(AssertionError):
    """Secret material found where it must never be; the message holds no secret."""


# ---- what counts as secret ----------------------------------------------------------------


def _forms(raw: bytes) -> Iterator[str]:
    """The ways ``raw`` could show up in text."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        text = None
    if text is not None:
        stripped = text.strip()
        if "-----BEGIN" in stripped:  # PEM: each body line (64 base64 characters)
            yield from (line for line in stripped.splitlines()
                        if len(line) >= 16 and "-----" not in line)
            return
        if stripped.startswith("{"):  # a private JWK: its private members
            try:
                doc = json.loads(stripped)
            except ValueError:
                doc = None
            if isinstance(doc, dict):
                yield from (str(doc[k]) for k in ("d", "p", "q", "dp", "dq", "qi", "k")
                            if isinstance(doc.get(k), str) and len(doc[k]) >= MIN_BYTES)
                return
        if len(stripped.encode()) >= MIN_BYTES:
            yield stripped
    yield base64.b64encode(raw).decode()
    yield base64.urlsafe_b64encode(raw).decode().rstrip("=")
    if text is None or not re.fullmatch(r"[0-9a-fA-F]+", text):
        yield raw.hex()


def secret_needles(secrets: Iterable[dict[str, Any]]) -> tuple[list[Needle], list[str]]:
    """Needles for every secret value in ``secrets`` (Secret objects), and the TOTP seeds."""
    needles: list[Needle] = []
    seeds: list[str] = []
    for secret in secrets:
        meta = secret.get("metadata") or {}
        where = f"Secret {meta.get('namespace')}/{meta.get('name')}"
        for key, encoded in (secret.get("data") or {}).items():
            if PUBLIC_KEYS.search(key):
                continue
            try:
                raw = base64.b64decode(encoded)
            except (binascii.Error, ValueError):
                continue
            if len(raw) < MIN_BYTES:
                continue
            if meta.get("name") == APPROVERS_SECRET:
                seeds.append(raw.decode(errors="replace").strip())
            fp = fingerprint(raw.decode(errors="replace"))
            needles.extend(Needle(form, f"{where} key {key}", fp) for form in _forms(raw))
    return needles, seeds


def witnessed_needles() -> list[Needle]:
    """What the operator tests' Secret witnesses remembered (revoked versions too)."""
    import sys

    conftest = sys.modules.get("tests.operator.conftest")
    seen = getattr(conftest, "SECRET_VALUES", set()) if conftest else set()
    return [Needle(v, "a keyrotor Secret seen by a test", fingerprint(v))
            for v in sorted(seen) if len(v.encode()) >= max(MIN_BYTES, 12)]


def totp_codes(seed: str, since: datetime.datetime, until: datetime.datetime) -> set[str]:
    """Every code ``seed`` produced from ``since`` to ``until`` (one step either side)."""
    import pyotp

    try:
        totp = pyotp.TOTP(seed)
        totp.byte_secret()
    except (binascii.Error, ValueError):
        return set()
    step = datetime.timedelta(seconds=totp.interval)
    codes, when = set(), since - step
    while when <= until + step:
        codes.add(totp.at(when))
        when += step
    return codes


# ---- where to look --------------------------------------------------------------------------


class Index:
    """Finds many needles in much text at once: secret values are tokens (base64, hex,
    alphanumeric), so the text's distinct tokens are checked against an index of the
    needles' first 8 characters; needles that are no tokens are searched plainly."""

    def __init__(self, needles: list[Needle]) -> None:
        self.by_prefix: dict[str, list[Needle]] = {}
        self.plain: list[Needle] = []
        for needle in needles:
            if TOKEN.fullmatch(needle.text):
                self.by_prefix.setdefault(needle.text[:8], []).append(needle)
            else:
                self.plain.append(needle)

    def find(self, text: str) -> Iterator[Needle]:
        for token in set(TOKEN.findall(text)):
            for i in range(len(token) - 7):
                for needle in self.by_prefix.get(token[i:i + 8], ()):
                    if token.startswith(needle.text, i):
                        yield needle
        for needle in self.plain:
            if needle.text in text:
                yield needle


def _kubectl_json(plane: ControlPlane, *args: str) -> list[dict[str, Any]]:
    result = plane.kubectl("get", *args, "-A", "-o", "json", check=False)
    if result.returncode != 0:
        return []
    items: list[dict[str, Any]] = json.loads(result.stdout).get("items") or []
    return items


def api_places(plane: ControlPlane,
               namespaces: set[str] | None) -> Iterator[tuple[str, str, bool]]:
    """(place, text, whole) for every object that may never hold secret material; ``whole``:
    a TOTP code counts anywhere in it (not only on a line about codes)."""
    def mine(obj: dict[str, Any]) -> bool:
        return namespaces is None or (obj.get("metadata") or {}).get("namespace") in namespaces

    def named(obj: dict[str, Any]) -> str:
        meta = obj.get("metadata") or {}
        return f"{obj.get('kind', '?')} {meta.get('namespace')}/{meta.get('name')}"

    for event in filter(mine, _kubectl_json(plane, "events")):
        text = " ".join(str(event.get(k) or "") for k in ("reason", "message", "note"))
        yield f"Event {named(event)} (about {event.get('involvedObject', {}).get('name')})", \
            text, True
    resources = plane.kubectl("api-resources", "--api-group=keyrotor.io", "-o", "name",
                              check=False).stdout.split()
    for resource in resources:
        for obj in filter(mine, _kubectl_json(plane, resource)):
            obj.get("metadata", {}).pop("managedFields", None)
            if obj.get("kind") == "RotationApproval":
                # The approval's input channel: its code lives there until the operator
                # judges (and deletes) it; a test that stops first leaves one behind.
                (obj.get("spec") or {}).pop("code", None)
            yield f"{named(obj)} (status, annotations, spec)", json.dumps(obj), True
    for secret in filter(mine, _kubectl_json(plane, "secrets")):
        meta = dict(secret.get("metadata") or {})
        meta.pop("managedFields", None)
        annotations = dict(meta.get("annotations") or {})
        if (meta.get("labels") or {}).get("app.kubernetes.io/managed-by") != "keyrotor" and \
                annotations.pop(LAST_APPLIED, None) is not None:
            # A test's own input Secret (a token, a PIN) created with client-side kubectl
            # apply: kubectl copies the data into this annotation of the same Secret. Not
            # keyrotor's doing; counted and named in the summary instead of failing.
            MIRRORED.add(named(secret))
            meta["annotations"] = annotations
        yield f"{named(secret)} metadata (annotations, labels)", json.dumps(meta), True
    for kind in ("configmaps", "leases"):
        for obj in filter(mine, _kubectl_json(plane, kind)):
            obj.get("metadata", {}).pop("managedFields", None)
            yield named(obj), json.dumps(obj), True


class Files:
    """Log and audit files under a folder (this process's pytest base temp), and texts that
    tests hand in (a metrics scrape, say)."""

    def __init__(self) -> None:
        self.roots: list[Path] = []
        self.notes: dict[str, str] = {}
        self.lock = threading.Lock()

    def places(self) -> Iterator[tuple[str, str, bool]]:
        seen: set[Path] = set()
        for root in self.roots:
            for pattern in LOG_NAMES:
                for path in root.rglob(pattern):
                    if path in seen or not path.is_file() or path.stat().st_size > MAX_FILE:
                        continue
                    seen.add(path)
                    yield str(path), path.read_text(errors="replace"), False
        with self.lock:
            notes = dict(self.notes)
        for where, text in notes.items():
            yield where, text, False


FILES = Files()
TOTAL = Report()
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
MIRRORED: set[str] = set()  # Secrets whose data kubectl apply copied into an annotation


def note(where: str, text: str) -> None:
    """Hand a text that the scan should cover (the latest one per ``where`` is kept)."""
    with FILES.lock:
        FILES.notes[where] = text


def scan(plane: ControlPlane, *, namespaces: set[str] | None = None,
         files: bool = True) -> Report:
    """Scan one plane's objects (those in ``namespaces``, or all) and the files."""
    began = time.monotonic()
    secrets = [s for s in _kubectl_json(plane, "secrets")
               if namespaces is None or s["metadata"].get("namespace") in namespaces]
    needles, seeds = secret_needles(secrets)
    needles += witnessed_needles()
    started = datetime.datetime.fromtimestamp(
        (plane.workdir / "owner.pid").stat().st_mtime, datetime.UTC)
    now = datetime.datetime.now(datetime.UTC)
    codes = set().union(*(totp_codes(seed, started, now) for seed in seeds)) if seeds \
        else set()
    needles += [Needle(seed, f"TOTP seed in Secret {APPROVERS_SECRET}", fingerprint(seed))
                for seed in seeds]
    index = Index(needles)
    code_re = re.compile(r"(?<![0-9.:])(" + "|".join(sorted(codes)) + r")(?![0-9])") \
        if codes else None
    report = Report(values=len({n.print for n in needles}), seeds=len(seeds),
                    codes=len(codes), planes=1)
    places = list(api_places(plane, namespaces))
    if files:
        places += list(FILES.places())
    for place, text, whole in places:
        report.places += 1
        for needle in {n.print + n.origin: n for n in index.find(text)}.values():
            report.hits.append(f"{place}: the secret {needle.print} ({needle.origin})")
        if code_re is not None:
            lines = [text] if whole else [line for line in text.splitlines()
                                          if CODE_CONTEXT.search(line)]
            for line in lines:
                if (match := code_re.search(line)) is not None:
                    report.hits.append(f"{place}: a TOTP code of an enrolled approver "
                                       f"({fingerprint(match.group(1))})")
                    break
    report.seconds = time.monotonic() - began
    return report


def _scan_on_stop(plane: ControlPlane) -> None:
    report = scan(plane)
    TOTAL.add(report)
    if report.hits:
        raise SecretLeak("secret material found (fingerprints, never values):\n  " +
                         "\n  ".join(report.hits))


# ---- the plugin -----------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    if _scan_on_stop not in controlplane.STOP_HOOKS:
        controlplane.STOP_HOOKS.append(_scan_on_stop)
    config.stash[_WORKERS] = []


_WORKERS = pytest.StashKey[list[dict[str, Any]]]()


@pytest.fixture(scope="session", autouse=True)
def _secretscan_files(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Scan the log files under this process's pytest base temp."""
    root = tmp_path_factory.getbasetemp()
    if root not in FILES.roots:
        FILES.roots.append(root)


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand the counts to the controller
        workeroutput["secretscan"] = json.dumps({**TOTAL.as_dict(),
                                                 "mirrored": sorted(MIRRORED)})


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist (controller): a worker finished; keep its counts."""
    output = getattr(node, "workeroutput", {}).get("secretscan")
    if output:
        node.config.stash[_WORKERS].append(json.loads(output))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    total = Report()
    total.add(TOTAL)
    mirrored = set(MIRRORED)
    for worker in config.stash.get(_WORKERS, []):
        mirrored.update(worker.pop("mirrored", ()))
        total.add(Report(**worker))
    if not total.planes:
        return
    verdict = f"{len(total.hits)} LEAKS" if total.hits else "no leak"
    terminalreporter.write_line(
        f"secret scan: {total.values} secret values ({total.seeds} TOTP seeds, "
        f"{total.codes} TOTP codes) checked in {total.places} places on {total.planes} "
        f"control planes in {total.seconds:.1f} s: {verdict}")
    if mirrored:
        terminalreporter.write_line(
            f"secret scan: {len(mirrored)} test input Secrets were created with client-side "
            "kubectl apply, which copies their data into the last-applied-configuration "
            f"annotation (not counted as leaks): {', '.join(sorted(mirrored)[:5])}"
            + (" ..." if len(mirrored) > 5 else ""))

