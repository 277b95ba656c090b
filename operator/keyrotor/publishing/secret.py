"""The Kubernetes Secret that consumers read: encoding the slots into it, and writing it safely.

Layout of the Secret keyrotor owns::

    data:
      current, current.pub, current.jwk, ...     the version to present (suffixes per generator)
      next, next.*                               staged: accept it, do not present it yet
      previous, previous.*                       still accepted during the overlap
      jwks.json                                  public JWKs of every filled slot (key pairs)
      versions.json                              {"current": 7, "previous": 6}: mounted, so
                                                 consumers can tell (and report) versions
      fingerprint.key                            HMAC key behind the fingerprints below
    metadata.annotations:
      keyrotor.io/{current,next,previous}-version       version numbers
      keyrotor.io/{current,next,previous}-fingerprint   HMAC-SHA256(fingerprint.key, value)

Fingerprints are keyed on purpose: a plain hash of a low-entropy value (a short password) would
let anyone who reads annotations brute-force it. A consumer that reads the Secret can recompute
them to tell which version it holds.

Writes use the Secret's resourceVersion (optimistic concurrency): a conflict re-reads and
re-applies the effect, which is idempotent. keyrotor never writes a Secret whose controller
owner is not this RotatingSecret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from keyrotor.engine.model import Effect
from keyrotor.errors import PermanentError, Reason
from keyrotor.generators import Material, main_value
from keyrotor.generators.local import jwks
from keyrotor.publishing.slots import Slots, Versioned, apply

SLOTS = ("current", "next", "previous")
FINGERPRINT_KEY = "fingerprint.key"
JWKS_KEY = "jwks.json"
VERSIONS_KEY = "versions.json"
ANNOTATION_PREFIX = "keyrotor.io/"
OWNER_ANNOTATION = ANNOTATION_PREFIX + "owner-uid"
MANAGED_BY = {"app.kubernetes.io/managed-by": "keyrotor"}


class SecretConflict(PermanentError):
    """The Secret exists and belongs to someone else; the message says how to fix it."""

    reason = Reason.SECRET_CONFLICT


@dataclass(frozen=True)
class Owner:
    """The RotatingSecret that owns the Secret."""

    name: str
    namespace: str
    uid: str
    # deletionPolicy Delete: an ownerReference, so the garbage collector removes the Secret
    # with its RotatingSecret. Retain: none (no finalizer needed to drop it in time); the
    # owner-uid annotation marks the Secret as keyrotor's either way.
    garbage_collected: bool = False
    api_version: str = "keyrotor.io/v1alpha1"
    kind: str = "RotatingSecret"

    def reference(self) -> dict[str, Any]:
        return {"apiVersion": self.api_version, "kind": self.kind, "name": self.name,
                "uid": self.uid, "controller": True, "blockOwnerDeletion": True}

    def references(self) -> list[dict[str, Any]]:
        return [self.reference()] if self.garbage_collected else []

    def owns(self, secret: dict[str, Any] | None) -> bool:
        meta = (secret or {}).get("metadata") or {}
        refs = meta.get("ownerReferences") or []
        return any(r.get("uid") == self.uid and r.get("controller") for r in refs) or (
            (meta.get("annotations") or {}).get(OWNER_ANNOTATION) == self.uid
            and not any(r.get("controller") for r in refs))

    def marked_on(self, secret: dict[str, Any] | None) -> bool:
        """Whether ``secret`` carries exactly this owner's marks (policy changes rewrite it)."""
        meta = (secret or {}).get("metadata") or {}
        return (meta.get("ownerReferences") or []) == self.references() and \
            (meta.get("annotations") or {}).get(OWNER_ANNOTATION) == self.uid


def fingerprint(key: bytes, value: bytes) -> str:
    return "hmac-sha256:" + hmac.new(key, value, hashlib.sha256).hexdigest()[:16]


def decode(secret: dict[str, Any] | None, *,
           verified: bool = False) -> tuple[Slots[Material], bytes | None]:
    """The slots held by a Secret (as returned by the API), and its fingerprint key. With
    ``verified``, only the slots whose value still matches its fingerprint (not edited)."""
    if not secret:
        return Slots(), None
    data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    found: dict[str, Versioned[Material]] = {}
    for slot in SLOTS:
        version = annotations.get(f"{ANNOTATION_PREFIX}{slot}-version")
        material = {key[len(slot):]: value for key, value in data.items()
                    if key == slot or key.startswith(f"{slot}.")}
        if version is None or not material or not version.isdigit():
            continue
        if verified and annotations.get(f"{ANNOTATION_PREFIX}{slot}-fingerprint") != (
                fingerprint(data[FINGERPRINT_KEY], main_value(material))
                if FINGERPRINT_KEY in data else None):
            continue
        found[slot] = Versioned(int(version), material)
    slots = Slots(current=found.get("current"), next=found.get("next"),
                  previous=found.get("previous"))
    return slots, data.get(FINGERPRINT_KEY)


def encode(slots: Slots[Material], *, name: str, owner: Owner, fingerprint_key: bytes,
           base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full Secret body for ``slots`` (keeps ``base``'s resourceVersion and foreign labels)."""
    meta = dict((base or {}).get("metadata") or {})
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if not k.startswith(ANNOTATION_PREFIX)}
    data: dict[str, bytes] = {FINGERPRINT_KEY: fingerprint_key}
    public_jwks: list[bytes] = []
    for slot, held in slots.filled().items():
        annotations[f"{ANNOTATION_PREFIX}{slot}-version"] = str(held.version)
        main = main_value(held.material)
        annotations[f"{ANNOTATION_PREFIX}{slot}-fingerprint"] = fingerprint(fingerprint_key,
                                                                             main)
        for suffix, value in held.material.items():
            data[f"{slot}{suffix}"] = value
        if ".pub.jwk" in held.material:
            public_jwks.append(held.material[".pub.jwk"])
    if public_jwks:
        data[JWKS_KEY] = jwks(public_jwks)
    data[VERSIONS_KEY] = json.dumps({slot: held.version for slot, held in
                                     slots.filled().items()}, sort_keys=True).encode()
    labels = {**(meta.get("labels") or {}), **MANAGED_BY,
              f"{ANNOTATION_PREFIX}rotatingsecret": owner.name}
    annotations[OWNER_ANNOTATION] = owner.uid
    metadata = {"name": name, "namespace": owner.namespace, "labels": labels,
                "annotations": annotations, "ownerReferences": owner.references()}
    if meta.get("resourceVersion"):
        metadata["resourceVersion"] = meta["resourceVersion"]
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": metadata,
            "data": {k: base64.b64encode(v).decode() for k, v in sorted(data.items())}}


def check_owner(secret: dict[str, Any] | None, owner: Owner, name: str) -> None:
    if secret is None:
        return
    if owner.owns(secret):
        return
    refs = (secret.get("metadata") or {}).get("ownerReferences") or []
    holder = next((f"{r.get('kind')} {r.get('name')}" for r in refs if r.get("controller")),
                  "nobody (no controller owner)")
    raise SecretConflict(
        f"Secret {owner.namespace}/{name} already exists and is owned by {holder}; keyrotor "
        f"never overwrites a Secret it does not own. Delete that Secret or set "
        f"spec.secretName of RotatingSecret {owner.name} to another name")


def inspect(secret: dict[str, Any], owner: Owner, name: str) -> tuple[dict[str, int], list[str]]:
    """What a Secret of keyrotor's still holds intact (slot -> version), and what is wrong
    with it besides (edited values, keys or labels), in words without secret material."""
    slots, key = decode(secret, verified=True)
    raw, _ = decode(secret)
    problems = [f"the value of slot {slot} (version {held.version}) was edited"
                for slot, held in raw.filled().items() if slots.filled().get(slot) != held]
    if key is None:
        problems.append(f"key {FINGERPRINT_KEY} is missing")
    elif not problems:
        clean = encode(slots, name=name, owner=owner, base=secret, fingerprint_key=key)
        data = secret.get("data") or {}
        edited = sorted(k for k in set(data) | set(clean["data"])
                        if data.get(k) != clean["data"].get(k))
        if edited:
            problems.append(f"keys {', '.join(edited)} were edited")
    if not _labelled(secret, owner):
        problems.append("its keyrotor labels were removed")
    return {slot: held.version for slot, held in slots.filled().items()}, problems


def _labelled(secret: dict[str, Any], owner: Owner) -> bool:
    labels = (secret.get("metadata") or {}).get("labels") or {}
    return labels.get(f"{ANNOTATION_PREFIX}rotatingsecret") == owner.name and all(
        labels.get(k) == v for k, v in MANAGED_BY.items())


def render(effect: Effect, current: dict[str, Any] | None, *, name: str, owner: Owner,
           generate: Callable[[int], Material]) -> dict[str, Any] | None:
    """The Secret body after ``effect``, or None when the Secret already reflects it.

    Only intact slots are carried over (a value edited by hand is dropped, not republished),
    and an effect that would leave no current version raises ``SlotError`` (SecretDrift)."""
    check_owner(current, owner, name)
    slots, key = decode(current, verified=True)
    after = apply(effect, slots, generate)
    body = encode(after, name=name, owner=owner, base=current,
                  fingerprint_key=key or secrets.token_bytes(32))
    if current is not None and key is not None and body["data"] == current.get("data") \
            and _ours(body) == _ours(current) and owner.marked_on(current) \
            and _labelled(current, owner):
        return None
    return body


def _ours(secret: dict[str, Any]) -> dict[str, str]:
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    return {k: v for k, v in annotations.items() if k.startswith(ANNOTATION_PREFIX)}
