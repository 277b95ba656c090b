"""The spec's shape, checked once before anything reads it: every field's type and range.

Admission checks the same with the CRD's schema, but the operator must not trust that alone
(a CRD applied without validation, an older CRD, a client that skips it): without this check a
string where an object belongs became an ``AttributeError`` deep in a reconcile, and a
``minOverlap`` of 99999999h an ``OverflowError`` in the engine. :func:`check` runs first in
``RotationSpec.parse``, so the generators, targets, probes and the reconciler only ever see a
spec whose fields have the types they read; each problem is a :class:`SpecError` naming the
field (``spec.consumers[api].http.timeout: ...``), which becomes the Degraded condition and one
Warning event.

The rules mirror crds/keyrotor.io_rotatingsecrets.yaml (types, enums, bounds); the "exactly one
of" rules and everything that needs more than one field stay with the code that reads them.
"""

from __future__ import annotations

import re
from typing import Any

from keyrotor.engine import fields as f
from keyrotor.errors import SpecError

_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _url(parent: dict[str, Any], key: str, field: str, *, required: bool = True) -> None:
    if parent.get(key) is None and not required:
        return
    value = f.string(parent, key, field, max_length=2048)
    if not value.startswith(("http://", "https://")):
        raise SpecError(field, "must start with http:// or https://")


def _strings(parent: dict[str, Any], path: str, *keys: str) -> None:
    """Optional string fields."""
    for key in keys:
        f.string(parent, key, f"{path}.{key}", None)


def _secret_ref(parent: dict[str, Any], key: str, path: str, *keys: str,
                required: bool = True) -> None:
    field = f"{path}.{key}"
    if parent.get(key) is None:
        if required:
            raise SpecError(field, "required")
        return
    ref = f.obj(parent, key, field)
    name = f.string(ref, "name", f"{field}.name", nonempty=True, max_length=253)
    if not _DNS_NAME.match(name):
        raise SpecError(f"{field}.name", f"{name[:64]!r} is not a Secret name")
    _strings(ref, field, *keys)


def _generator(spec: dict[str, Any]) -> None:
    gen = f.obj(spec, "generator", "spec.generator")
    for kind in ("random", "symmetric", "keyPair", "vault", "hsm"):
        if gen.get(kind) is not None:
            f.obj(gen, kind, f"spec.generator.{kind}")
    if random := f.obj(gen, "random", "spec.generator.random"):
        f.integer(random, "length", "spec.generator.random.length", 32, minimum=16,
                  maximum=4096)
        f.string(random, "encoding", "spec.generator.random.encoding", "base64url",
                 allowed=("base64url", "hex", "alphanumeric", "custom"))
        f.string(random, "alphabet", "spec.generator.random.alphabet", None, max_length=256)
    if symmetric := f.obj(gen, "symmetric", "spec.generator.symmetric"):
        f.string(symmetric, "algorithm", "spec.generator.symmetric.algorithm")
    if pair := f.obj(gen, "keyPair", "spec.generator.keyPair"):
        f.string(pair, "algorithm", "spec.generator.keyPair.algorithm")
        formats = f.array(pair, "formats", "spec.generator.keyPair.formats")  # []: both
        for i, item in enumerate(formats):
            f.string({"x": item}, "x", f"spec.generator.keyPair.formats[{i}]",
                     allowed=("pem", "jwk"))
    if vault := f.obj(gen, "vault", "spec.generator.vault"):
        _vault(vault)
    if hsm := f.obj(gen, "hsm", "spec.generator.hsm"):
        path = "spec.generator.hsm"
        f.string(hsm, "module", f"{path}.module", nonempty=True)
        f.string(hsm, "tokenLabel", f"{path}.tokenLabel", nonempty=True)
        _secret_ref(hsm, "pinSecretRef", path, "key")
        f.string(hsm, "key", f"{path}.key", "AES-256", allowed=("AES-256", "EC-P256"))
        f.string(hsm, "labelPrefix", f"{path}.labelPrefix", None, max_length=64)


def _vault(vault: dict[str, Any]) -> None:
    path = "spec.generator.vault"
    _url(vault, "address", f"{path}.address")
    _strings(vault, path, "caBundle")
    auth = f.obj(vault, "auth", f"{path}.auth")
    _secret_ref(auth, "tokenSecretRef", f"{path}.auth", "key", required=False)
    if kube := f.obj(auth, "kubernetes", f"{path}.auth.kubernetes"):
        f.string(kube, "role", f"{path}.auth.kubernetes.role", nonempty=True)
        _strings(kube, f"{path}.auth.kubernetes", "mount", "tokenPath")
    if kv := f.obj(vault, "kv", f"{path}.kv"):
        f.string(kv, "path", f"{path}.kv.path", nonempty=True)
        _strings(kv, f"{path}.kv", "mount")
        f.integer(kv, "length", f"{path}.kv.length", 32, minimum=16, maximum=4096)
        f.string(kv, "encoding", f"{path}.kv.encoding", "base64url",
                 allowed=("base64url", "hex", "alphanumeric"))
        f.boolean(kv, "destroy", f"{path}.kv.destroy", True)
    if transit := f.obj(vault, "transit", f"{path}.transit"):
        f.string(transit, "key", f"{path}.transit.key", nonempty=True)
        _strings(transit, f"{path}.transit", "mount", "type")
        if hook := f.obj(transit, "rewrapHook", f"{path}.transit.rewrapHook"):
            _url(hook, "url", f"{path}.transit.rewrapHook.url")
            f.integer(hook, "timeoutSeconds", f"{path}.transit.rewrapHook.timeoutSeconds", 30,
                      minimum=1, maximum=3600)


def _server(spec: dict[str, Any], path: str) -> None:
    """PostgreSQL connection fields, shared by the target and the consumer probe."""
    f.string(spec, "host", f"{path}.host", nonempty=True, max_length=253)
    f.integer(spec, "port", f"{path}.port", 5432, minimum=1, maximum=65535)
    f.string(spec, "database", f"{path}.database", None, max_length=63)
    f.string(spec, "sslMode", f"{path}.sslMode", None, allowed=SSL_MODES)


def _consumers(spec: dict[str, Any]) -> None:
    seen: set[str] = set()
    for i, item in enumerate(f.array(spec, "consumers", "spec.consumers")):
        consumer = f.mapping(item, f"spec.consumers[{i}]")
        name = f.string(consumer, "name", f"spec.consumers[{i}].name", nonempty=True,
                        max_length=63)
        if name in seen:
            raise SpecError(f"spec.consumers[{name}].name", "is used twice; names are unique")
        seen.add(name)
        path = f"spec.consumers[{name}]"
        f.string(consumer, "during", f"{path}.during", "Both",
                 allowed=("Both", "Acceptance", "Activation", "Retirement"))
        for kind in ("http", "prometheus", "postgres", "target", "transit"):
            f.obj(consumer, kind, f"{path}.{kind}")
        if http := f.obj(consumer, "http", f"{path}.http"):
            _url(http, "url", f"{path}.http.url")
            f.string(http, "method", f"{path}.http.method", "GET",
                     allowed=("GET", "HEAD", "POST", "PUT"))
            for header, value in f.obj(http, "headers", f"{path}.http.headers").items():
                f.string({"x": value}, "x", f"{path}.http.headers.{header}", max_length=4096)
            _strings(http, f"{path}.http", "body", "caBundle")
            for n, code in enumerate(f.array(http, "expectStatus", f"{path}.http.expectStatus")):
                f.integer({"x": code}, "x", f"{path}.http.expectStatus[{n}]", 0, minimum=100,
                          maximum=599)
            f.duration(http, "timeout", f"{path}.http.timeout", "5s", minimum=0.001)
            f.boolean(http, "insecureSkipTLSVerify", f"{path}.http.insecureSkipTLSVerify", False)
        if prometheus := f.obj(consumer, "prometheus", f"{path}.prometheus"):
            _url(prometheus, "url", f"{path}.prometheus.url")
            f.string(prometheus, "query", f"{path}.prometheus.query", nonempty=True)
            f.string(prometheus, "expect", f"{path}.prometheus.expect", None)
            f.duration(prometheus, "timeout", f"{path}.prometheus.timeout", "5s",
                       minimum=0.001)
            _strings(prometheus, f"{path}.prometheus", "caBundle")
        if postgres := f.obj(consumer, "postgres", f"{path}.postgres"):
            _server(postgres, f"{path}.postgres")
            f.string(postgres, "username", f"{path}.postgres.username", None, max_length=63)


def _target(spec: dict[str, Any]) -> None:
    target = f.obj(spec, "target", "spec.target")
    f.duration(target, "activateAfter", "spec.target.activateAfter", "90s")
    if postgres := f.obj(target, "postgres", "spec.target.postgres"):
        path = "spec.target.postgres"
        _server(postgres, path)
        roles = f.array(postgres, "roles", f"{path}.roles")
        for i, role in enumerate(roles):
            f.string({"x": role}, "x", f"{path}.roles[{i}]", nonempty=True, max_length=63)
        f.string(postgres, "memberOf", f"{path}.memberOf", None, max_length=63)
        f.boolean(postgres, "terminateSessions", f"{path}.terminateSessions", True)
        _secret_ref(postgres, "adminSecretRef", path, "usernameKey", "passwordKey")
    if webhook := f.obj(target, "webhook", "spec.target.webhook"):
        path = "spec.target.webhook"
        _url(webhook, "url", f"{path}.url")
        _secret_ref(webhook, "authSecretRef", path, "key", required=False)
        _strings(webhook, path, "caBundle")
        f.duration(webhook, "timeout", f"{path}.timeout", "10s", minimum=0.001)


def _no_nulls(value: Any, path: str) -> None:
    """The API server drops nulls from a custom resource; one that arrives anyway (a client
    that skipped it) would read as "not set" in one place and crash another."""
    if value is None:
        raise SpecError(path, "is null: remove the field or give it a value")
    if isinstance(value, dict):
        for key, item in value.items():
            _no_nulls(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _no_nulls(item, f"{path}[{i}]")


def check(spec: Any) -> dict[str, Any]:
    """``spec`` as a dict whose every field has the type and range the CRD gives it; else a
    :class:`SpecError` naming the first field that does not."""
    if spec is None:
        raise SpecError("spec", "required")
    checked = f.mapping(spec, "spec")
    _no_nulls(checked, "spec")
    spec = checked
    # A whole resource's spec has both (admission requires them); the engine's tests parse
    # fragments (a rotation block alone), which the generator check below leaves alone too.
    whole = "generator" in spec
    if whole or spec.get("secretName") is not None:
        name = f.string(spec, "secretName", "spec.secretName", nonempty=True, max_length=253)
    else:
        name = ""
    if name and not _DNS_NAME.match(name):
        raise SpecError("spec.secretName", f"{name[:64]!r} is not a valid Secret name: use "
                        "lowercase letters, digits, '-' and '.'")
    f.string(spec, "deletionPolicy", "spec.deletionPolicy", None, allowed=("Retain", "Delete"))
    f.string(spec, "strategy", "spec.strategy", None, allowed=("TwoKeys", "OneKey"))
    rotation = f.obj(spec, "rotation", "spec.rotation")
    f.duration(rotation, "every", "spec.rotation.every", None, minimum=1.0)
    f.string(rotation, "schedule", "spec.rotation.schedule", None, max_length=128)
    f.duration(rotation, "minOverlap", "spec.rotation.minOverlap", "10m")
    f.duration(rotation, "maxOverlap", "spec.rotation.maxOverlap", "24h")
    f.boolean(rotation, "suspend", "spec.rotation.suspend", False)
    _generator(spec)
    _consumers(spec)
    _target(spec)
    target = f.obj(spec, "target", "spec.target")
    if "symmetric" in f.obj(spec, "generator", "spec.generator") and (
            "webhook" in target or "postgres" in target):
        # Raw key bytes are no text: a webhook's JSON body and a PostgreSQL password carry
        # text (it was a UnicodeDecodeError when the version was activated).
        raise SpecError("spec.generator.symmetric", f"makes raw bytes, which spec.target."
                        f"{'webhook' if 'webhook' in target else 'postgres'} cannot take; use "
                        "generator.random")
    for i, item in enumerate(f.array(spec, "rolloutRestartTargets",
                                     "spec.rolloutRestartTargets")):
        workload = f.mapping(item, f"spec.rolloutRestartTargets[{i}]")
        f.string(workload, "kind", f"spec.rolloutRestartTargets[{i}].kind",
                 allowed=("Deployment", "StatefulSet", "DaemonSet"))
        f.string(workload, "name", f"spec.rolloutRestartTargets[{i}].name", nonempty=True,
                 max_length=253)
    verification = f.obj(spec, "verification", "spec.verification")
    f.integer(verification, "failureThreshold", "spec.verification.failureThreshold", 3,
              minimum=1, maximum=100)
    f.duration(verification, "interval", "spec.verification.interval", "15s", minimum=0.1)
    f.integer(verification, "successesRequired", "spec.verification.successesRequired", 3,
              minimum=1, maximum=100)
    revocation = f.obj(spec, "revocation", "spec.revocation")
    f.duration(revocation, "delay", "spec.revocation.delay", "0s")
    f.integer(revocation, "keepHistory", "spec.revocation.keepHistory", 0, minimum=0,
              maximum=100)
    emergency = f.obj(spec, "emergency", "spec.emergency")
    f.integer(emergency, "approvals", "spec.emergency.approvals", 1, minimum=1, maximum=5)
    f.duration(emergency, "requestTTL", "spec.emergency.requestTTL", "10m")
    decoys = f.obj(spec, "decoys", "spec.decoys")
    f.integer(decoys, "count", "spec.decoys.count", 1, minimum=0, maximum=5)
    return checked
