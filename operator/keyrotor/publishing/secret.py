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
      retired-<N>                                decoys (spec.decoys), see below
    metadata.annotations:
      keyrotor.io/{current,next,previous}-version       version numbers
      keyrotor.io/{current,next,previous}-fingerprint   HMAC-SHA256(fingerprint.key, value)
      keyrotor.io/retired-fingerprints                  the decoys' fingerprints, comma-separated

Fingerprints are keyed on purpose: a plain hash of a low-entropy value (a short password) would
let anyone who reads annotations brute-force it. A consumer that reads the Secret can recompute
them to tell which version it holds.

Decoys (honeytokens, ``spec.decoys.count``): values no legitimate client ever presents, published
as ordinary-looking retired versions: data key ``retired-<N>`` holds a value of the same shape
and length as the real ones (same alphabet, a fresh key of the same type for PEM key pairs), and
``versions.json`` lists it under ``"retired": {"<N>": "hmac-sha256:..."}``. That listed tag is
not the value's fingerprint but ``HMAC(fingerprint.key, "keyrotor.io/decoy" NUL value)``: the
consumer library recomputes it to recognise a decoy, while the layout alone (a retired version
with a fingerprint) shows a casual thief nothing unusual. Someone who reads this code and holds
the whole Secret can tell decoys apart too: they are a tripwire for thieves who spray what they
found, not a secret scheme. Decoys are never in a slot, so they are never valid (invariant 3 is
about slots only). They are carried over from the Secret on every write (a presenter's view of
them never flickers), relabelled only when a real version number catches up with a label, and
made anew on an emergency revocation. The annotation lists the ordinary fingerprint
(``fingerprint(key, value)``) of each decoy, which is what the consumer library reports and the
operator's report endpoint (:mod:`keyrotor.decoys`) checks, without reading any value.

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
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from keyrotor.engine import model
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
DECOY_PREFIX = "retired-"
DECOY_ANNOTATION = ANNOTATION_PREFIX + "retired-fingerprints"
DECOY_TAG_CONTEXT = b"keyrotor.io/decoy\x00"
MAX_DECOYS = 5
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
    # spec.decoys.count (see decoy_count): how many decoys the Secret should hold; None keeps
    # whatever decoys it holds (callers that only re-mark or inspect the Secret).
    decoys: int | None = None
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
        """Whether ``secret`` carries exactly this owner's marks (policy changes rewrite it),
        and as many decoys as it should (a changed spec.decoys.count rewrites it too)."""
        meta = (secret or {}).get("metadata") or {}
        return (meta.get("ownerReferences") or []) == self.references() and \
            (meta.get("annotations") or {}).get(OWNER_ANNOTATION) == self.uid and \
            (self.decoys is None or len(decoy_fingerprints(secret)) == self.decoys)


def fingerprint(key: bytes, value: bytes) -> str:
    return "hmac-sha256:" + hmac.new(key, value, hashlib.sha256).hexdigest()[:16]


def decoy_tag(key: bytes, value: bytes) -> str:
    """What ``versions.json`` lists for a decoy: keyed, and unlike the value's fingerprint."""
    return "hmac-sha256:" + hmac.new(key, DECOY_TAG_CONTEXT + value,
                                     hashlib.sha256).hexdigest()[:16]


def decoy_count(spec: dict[str, Any]) -> int:
    """How many decoys ``spec`` asks for: ``spec.decoys.count`` (1 when ``decoys`` is set
    without a count, as the CRD defaults it), 0 without ``spec.decoys``."""
    decoys = spec.get("decoys")
    if not isinstance(decoys, dict):
        return 0
    try:
        count = int(decoys.get("count", 1))
    except (TypeError, ValueError):
        return 0
    return max(0, min(MAX_DECOYS, count))


@dataclass(frozen=True)
class Decoy:
    """A decoy value and the retired version number it poses as (never logged: no repr)."""

    version: int
    value: bytes = field(repr=False)


def decoys_of(secret: dict[str, Any] | None, key: bytes | None) -> list[Decoy]:
    """The intact decoys a Secret holds (tag recomputed with ``key``), by version."""
    if not secret or key is None:
        return []
    data = secret.get("data") or {}
    try:
        listed = json.loads(base64.b64decode(data.get(VERSIONS_KEY, ""))).get("retired") or {}
    except (ValueError, AttributeError):
        return []
    found = []
    for label, tag in (listed.items() if isinstance(listed, dict) else ()):
        encoded = data.get(f"{DECOY_PREFIX}{label}")
        if not str(label).isdigit() or encoded is None or not isinstance(tag, str):
            continue
        value = base64.b64decode(encoded)
        if hmac.compare_digest(decoy_tag(key, value), tag):
            found.append(Decoy(int(label), value))
    return sorted(found, key=lambda d: d.version)


def decoy_fingerprints(secret: dict[str, Any] | None) -> set[str]:
    """The decoys' fingerprints from the Secret's annotation (metadata only, no values)."""
    annotations = ((secret or {}).get("metadata") or {}).get("annotations") or {}
    text = annotations.get(DECOY_ANNOTATION) or ""
    return {f for f in text.split(",") if f}


_PRINTABLE = set(string.printable.encode()) - set(b"\x0b\x0c")


def imitate(template: bytes) -> bytes:
    """A fresh random value that looks like ``template``: a new key of the same type for a
    PEM private key; the same length over the same alphabet for text (hex stays hex,
    base64url stays base64url, padding and PEM armour lines kept); random bytes otherwise."""
    if template.startswith(b"-----BEGIN") and b"PRIVATE KEY" in template:
        try:
            return _new_key_like(template)
        except (ValueError, TypeError):
            pass
    if template.startswith(b"{"):
        try:
            doc = json.loads(template)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            return json.dumps({k: imitate(v.encode()).decode() if isinstance(v, str) and
                               len(v) >= 16 else v for k, v in doc.items()},
                              sort_keys=True).encode()
    if not template or not set(template) <= _PRINTABLE:
        return secrets.token_bytes(len(template))
    lines = template.split(b"\n")
    return b"\n".join(line if line.startswith(b"-----") else _imitate_text(line)
                      for line in lines)


def _imitate_text(text: bytes) -> bytes:
    body = text.rstrip(b"=")
    chars = set(body.decode())
    if chars <= set("0123456789abcdef"):
        alphabet = "0123456789abcdef"
    elif chars <= set("0123456789ABCDEF"):
        alphabet = "0123456789ABCDEF"
    else:
        classes = (string.digits, string.ascii_lowercase, string.ascii_uppercase)
        others = chars - set(string.ascii_letters + string.digits)
        alphabet = "".join(sorted({c for cls in classes if chars & set(cls) for c in cls}
                                  | others))
    made = "".join(secrets.choice(alphabet) for _ in range(len(body)))
    return made.encode() + text[len(body):]


def _new_key_like(pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(pem, password=None)
    new: Any
    if isinstance(key, rsa.RSAPrivateKey):
        new = rsa.generate_private_key(65537, key.key_size)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        new = ec.generate_private_key(key.curve)
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        new = ed25519.Ed25519PrivateKey.generate()
    elif isinstance(key, ed448.Ed448PrivateKey):
        new = ed448.Ed448PrivateKey.generate()
    else:
        raise TypeError("unknown key type")
    fmt = serialization.PrivateFormat.TraditionalOpenSSL if b"BEGIN RSA" in pem or \
        b"BEGIN EC" in pem else serialization.PrivateFormat.PKCS8
    made: bytes = new.private_bytes(serialization.Encoding.PEM, fmt,
                                    serialization.NoEncryption())
    return made


def _labelled_decoys(decoys: Sequence[Decoy], real: set[int]) -> list[Decoy]:
    """``decoys`` with plausible, distinct retired version numbers: each keeps its number
    while that is below every real version; others take free numbers below the lowest real
    version (highest first), else, early in a Secret's life when there is no room below,
    numbers above the newest (relabelled again once real versions catch up)."""
    low, high = (min(real), max(real)) if real else (1, 0)
    kept: list[Decoy] = []
    taken = set(real)
    for decoy in decoys:
        if 0 < decoy.version < low and decoy.version not in taken:
            kept.append(decoy)
            taken.add(decoy.version)
        else:
            kept.append(Decoy(-1, decoy.value))
    free_below = [n for n in range(low - 1, 0, -1) if n not in taken]
    above = high + 1
    labelled = []
    for decoy in kept:
        if decoy.version > 0:
            labelled.append(decoy)
            continue
        if free_below:
            number = free_below.pop(0)
        else:
            while above in taken:
                above += 1
            number = above
        taken.add(number)
        labelled.append(Decoy(number, decoy.value))
    return sorted(labelled, key=lambda d: d.version)


def _adjusted(decoys: list[Decoy], wanted: int | None,
              slots: Slots[Material]) -> list[Decoy]:
    """``decoys``, cut or topped up to ``wanted`` (None: as many as there are) with new ones
    shaped like ``slots``' current value, labelled plausibly against ``slots``' versions."""
    wanted = len(decoys) if wanted is None else wanted
    decoys = list(decoys[:wanted])
    if slots.current is not None and len(decoys) < wanted:
        template = main_value(slots.current.material)
        decoys += [Decoy(-1, imitate(template)) for _ in range(wanted - len(decoys))]
    return _labelled_decoys(decoys, {v.version for v in slots.filled().values()})


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
           base: dict[str, Any] | None = None,
           decoys: Sequence[Decoy] | None = None) -> dict[str, Any]:
    """The full Secret body for ``slots`` (keeps ``base``'s resourceVersion and foreign labels).
    Without ``decoys``, the intact decoys of ``base`` are carried over, as many as
    ``owner.decoys`` asks for (new ones made when it asks for more; all of them when None)."""
    if decoys is None:
        decoys = _adjusted(decoys_of(base, fingerprint_key), owner.decoys, slots)
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
    listed: dict[str, Any] = {slot: held.version for slot, held in slots.filled().items()}
    if decoys:
        listed["retired"] = {str(d.version): decoy_tag(fingerprint_key, d.value)
                             for d in decoys}
        for decoy in decoys:
            data[f"{DECOY_PREFIX}{decoy.version}"] = decoy.value
        annotations[DECOY_ANNOTATION] = ",".join(fingerprint(fingerprint_key, d.value)
                                                 for d in decoys)
    data[VERSIONS_KEY] = json.dumps(listed, sort_keys=True).encode()
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
        # As the Secret holds them: a count to change is not drift (the reconciler re-marks).
        clean = encode(slots, name=name, owner=replace(owner, decoys=None), base=secret,
                       fingerprint_key=key)
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
    fingerprint_key = key or secrets.token_bytes(32)
    decoys = decoys_of(current, key)
    if _emergency(effect):
        decoys = []  # the Secret leaked: its decoys are known too; make new ones
    body = encode(after, name=name, owner=owner, base=current, fingerprint_key=fingerprint_key,
                  decoys=_adjusted(decoys, owner.decoys, after))
    if current is not None and key is not None and body["data"] == current.get("data") \
            and _ours(body) == _ours(current) and owner.marked_on(current) \
            and _labelled(current, owner):
        return None
    return body


def _emergency(effect: Effect) -> bool:
    emergency = getattr(model, "EmergencyRevoke", None)
    return emergency is not None and isinstance(effect, emergency)


def _ours(secret: dict[str, Any]) -> dict[str, str]:
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    return {k: v for k, v in annotations.items() if k.startswith(ANNOTATION_PREFIX)}
