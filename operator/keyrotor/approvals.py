"""TOTP approvers and the approvals of an emergency revocation (``keyrotor revoke-now``).

An emergency revocation issues a new version and revokes the old ones at once, skipping the
overlap: presenters still on an old key fail. It needs ``spec.emergency.approvals`` different
approvers, each proving themselves with a TOTP code (RFC 6238, 30 s steps, 6 digits) from the
authenticator app they enrolled with ``keyrotor approvers add``.

Where things live:

* **Seeds**: the Secret ``keyrotor-approvers`` in the operator's namespace,
  ``data[<approver>]`` = the base32 seed (``pyotp.random_base32()``). Only the operator's
  ServiceAccount (a Role limited to that one Secret) and cluster admins can read it.
* **Per-approver state** (last accepted step, wrong codes in a row, locked until): the JSON
  annotation ``keyrotor.io/approver-state`` on that Secret. No secret in it: a step number is
  a time. Every change is written with the Secret's resourceVersion as a precondition, so two
  operators (or two reconciles) that see the same code cannot both accept it: the loser gets a
  409, re-reads, and finds the step already used (``Replayed``).
* **Requests**: the RotatingSecret's annotation ``keyrotor.io/revoke-now`` holds the request id
  (never a code). Each approval is a ``RotationApproval`` object (keyrotor.io/v1alpha1) naming
  the RotatingSecret, the request, the approver and the code. The operator deletes each one
  before it judges it, so a code stays in etcd only from ``kubectl create`` to the judgement
  (seconds), and a code is judged at most once even when two replicas race. One that names no
  open request (no annotation, another request id, a request that expired or ended) is judged
  as soon as it appears too: deleted and rejected without its code being checked, so it
  neither lingers nor counts toward a lockout.

Rules (:meth:`Approvers.verify`): a code is accepted for the current step or one step either
side (pyotp's ``valid_window=1``); the accepted step must be later than that approver's last
accepted one (no replay, also of a code from the previous step after a later one was used);
:data:`MAX_FAILURES` wrong codes in a row lock that approver for :data:`LOCKOUT` seconds, during
which even a right code is refused (``Locked``). Verdicts and their messages never carry a
code or a seed.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyotp
from pyotp import utils as otp_utils

from keyrotor import metrics
from keyrotor.errors import Conflict
from keyrotor.kube import GROUP, VERSION, KubeApi

log = logging.getLogger("keyrotor.approvals")

REQUEST_ANNOTATION = "keyrotor.io/revoke-now"
APPROVAL_LABEL = "keyrotor.io/rotating-secret"
STATE_ANNOTATION = "keyrotor.io/approver-state"
DEFAULT_SECRET = "keyrotor-approvers"  # noqa: S105 - a Secret's name
PLURAL = "rotationapprovals"
KIND = "RotationApproval"
ACTION = "RevokeNow"
MAX_FAILURES, LOCKOUT = 5, 900.0
# Approver names are keys of the Secret's data and appear in events, status and metrics.
NAME = re.compile(r"^[a-z0-9]([-a-z0-9._]{0,61}[a-z0-9])?$")
CODE = re.compile(r"^[0-9]{6,8}$")
REQUEST = re.compile(r"^[-._A-Za-z0-9]{1,63}$")
_ATTEMPTS = 8  # writes lost to a concurrent writer before giving up (a Conflict: retried)


@dataclass(frozen=True)
class Verdict:
    """What :meth:`Approvers.verify` decided. ``message`` is for people: never the code."""

    ok: bool
    reason: str  # Accepted, WrongCode, Replayed, Locked, LockedOut, UnknownApprover
    message: str


@dataclass(frozen=True)
class Judged:
    """One judged (and deleted) RotationApproval."""

    approval: str        # the RotationApproval's name
    approver: str
    request: str
    ok: bool
    reason: str          # Verdict's reasons, or NoRequest, OtherRequest, RequestEnded,
                         # WrongAction (an approval of no open request: its code unchecked)
    message: str         # human, never the code or the seed


@dataclass(frozen=True)
class ApproverInfo:
    """An enrolled approver as ``keyrotor approvers list`` shows it (no seed)."""

    name: str
    last_accepted: datetime.datetime | None  # start of the last accepted step
    failures: int                            # wrong codes in a row
    locked_until: datetime.datetime | None


class ApproverExists(ValueError):
    """``add`` of a name already enrolled, without ``replace``."""


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _ts(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_ts(text: Any) -> datetime.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.UTC)
    except ValueError:
        return None


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise ValueError(f"approver name {name!r}: lowercase letters, digits, '-', '.' and '_', "
                         "starting and ending with a letter or digit, at most 63 characters")
    return name


def approvals_path(namespace: str, name: str = "") -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}" + (
        f"/{name}" if name else "")


def approval_body(*, rotating_secret: str, request: str, approver: str,
                  code: str) -> dict[str, Any]:
    """A RotationApproval to create (``generateName``: one object per approval)."""
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
            "metadata": {"generateName": f"{rotating_secret[:50]}-",
                         "labels": {APPROVAL_LABEL: rotating_secret}},
            "spec": {"rotatingSecret": rotating_secret, "action": ACTION, "request": request,
                     "approver": approver, "code": code}}


class Approvers:
    """The enrolled approvers (their seeds and state in one Secret) and the judge of
    RotationApprovals. Blocking: the operator calls it through ``asyncio.to_thread``."""

    def __init__(self, api: KubeApi, *, namespace: str, secret: str = DEFAULT_SECRET,
                 clock: Callable[[], datetime.datetime] = _utcnow) -> None:
        self.api, self.namespace, self.secret, self.clock = api, namespace, secret, clock

    # ---- the Secret --------------------------------------------------------------------------

    @property
    def _path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/secrets/{self.secret}"

    def _read(self) -> dict[str, Any] | None:
        return self.api.request("GET", self._path, verb="get", resource="secrets",
                                namespace=self.namespace)

    def _replace(self, secret: dict[str, Any]) -> None:
        """PUT with the read resourceVersion: 409 (Conflict) if anyone wrote in between."""
        answer = self.api.request("PUT", self._path, body=secret, verb="update",
                                  resource="secrets", namespace=self.namespace)
        if answer is None:  # deleted since it was read: as good as a conflict
            raise Conflict(f"Secret {self.namespace}/{self.secret} disappeared")

    @staticmethod
    def _states(secret: dict[str, Any]) -> dict[str, dict[str, Any]]:
        text = ((secret.get("metadata") or {}).get("annotations") or {}).get(STATE_ANNOTATION)
        try:
            states = json.loads(text) if text else {}
        except ValueError:
            log.warning("approver state annotation is not JSON; starting afresh")
            return {}
        return {k: v for k, v in states.items() if isinstance(v, dict)} \
            if isinstance(states, dict) else {}

    @staticmethod
    def _with_states(secret: dict[str, Any],
                     states: dict[str, dict[str, Any]]) -> dict[str, Any]:
        meta = dict(secret.get("metadata") or {})
        annotations = dict(meta.get("annotations") or {})
        annotations[STATE_ANNOTATION] = json.dumps(states, sort_keys=True,
                                                   separators=(",", ":"))
        meta["annotations"] = annotations
        return {**secret, "metadata": meta}

    # ---- enrolment ---------------------------------------------------------------------------

    def add(self, name: str, *, issuer: str = "keyrotor", replace: bool = False) -> str:
        """Enrol ``name`` with a new seed; the ``otpauth://`` provisioning URI (the only time
        the seed leaves the Secret). An existing name is refused unless ``replace`` (which
        also clears its state: a new seed, a new start)."""
        check_name(name)
        seed = pyotp.random_base32()
        encoded = base64.b64encode(seed.encode()).decode()
        for _ in range(_ATTEMPTS):
            secret = self._read()
            try:
                if secret is None:
                    self.api.request(
                        "POST", f"/api/v1/namespaces/{self.namespace}/secrets",
                        verb="create", resource="secrets", namespace=self.namespace,
                        body=self._with_states({
                            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                            "metadata": {"name": self.secret, "namespace": self.namespace,
                                         "labels": {"app.kubernetes.io/name": "keyrotor",
                                                    "app.kubernetes.io/component":
                                                        "approvers"}},
                            "data": {name: encoded}}, {}))
                else:
                    data = dict(secret.get("data") or {})
                    if name in data and not replace:
                        raise ApproverExists(
                            f"approver {name!r} is already enrolled: remove it first, or "
                            "replace its seed (the old one stops working)")
                    data[name] = encoded
                    states = self._states(secret)
                    states.pop(name, None)
                    self._replace(self._with_states({**secret, "data": data}, states))
            except Conflict:
                continue
            log.info("approver %s enrolled in Secret %s/%s", name, self.namespace, self.secret)
            return pyotp.TOTP(seed).provisioning_uri(name=name, issuer_name=issuer)
        raise Conflict(f"Secret {self.namespace}/{self.secret} kept changing; try again")

    def remove(self, name: str) -> bool:
        """Unenrol ``name``; False if it was not enrolled."""
        for _ in range(_ATTEMPTS):
            secret = self._read()
            data = dict((secret or {}).get("data") or {})
            if secret is None or name not in data:
                return False
            del data[name]
            states = self._states(secret)
            states.pop(name, None)
            try:
                self._replace(self._with_states({**secret, "data": data}, states))
            except Conflict:
                continue
            metrics.APPROVER_LOCKED.labels(name).set(0)
            log.info("approver %s removed from Secret %s/%s", name, self.namespace,
                     self.secret)
            return True
        raise Conflict(f"Secret {self.namespace}/{self.secret} kept changing; try again")

    def names(self) -> list[str]:
        return sorted((self._read() or {}).get("data") or {})

    def info(self) -> list[ApproverInfo]:
        """Every approver with its state (no seed)."""
        secret = self._read() or {}
        states = self._states(secret)
        found = []
        for name in sorted(secret.get("data") or {}):
            state = states.get(name, {})
            step = state.get("lastStep")
            last = (datetime.datetime.fromtimestamp(step * 30, datetime.UTC)
                    if isinstance(step, int) and step > 0 else None)
            found.append(ApproverInfo(name=name, last_accepted=last,
                                      failures=int(state.get("failures") or 0),
                                      locked_until=_parse_ts(state.get("lockedUntil"))))
        return found

    # ---- verification ------------------------------------------------------------------------

    def verify(self, name: str, code: str) -> Verdict:
        """Judge ``code`` for approver ``name`` now, and record the outcome (last step,
        wrong codes, lock). Written with a resourceVersion precondition: on a 409 the state is
        re-read and the code judged again, so a code is accepted at most once anywhere."""
        for _ in range(_ATTEMPTS):
            secret = self._read()
            data = (secret or {}).get("data") or {}
            if secret is None or name not in data:
                return self._counted(name, Verdict(
                    False, "UnknownApprover",
                    f"{name!r} is not an enrolled approver (keyrotor approvers list)"))
            states = self._states(secret)
            state = dict(states.get(name) or {})
            now = self.clock()
            locked_until = _parse_ts(state.get("lockedUntil"))
            if locked_until is not None and now < locked_until:
                metrics.APPROVER_LOCKED.labels(name).set(1)
                return self._counted(name, Verdict(
                    False, "Locked", f"{name} is locked until {_ts(locked_until)} after "
                                     f"{MAX_FAILURES} wrong codes in a row"))
            last = state.get("lastStep")
            last = last if isinstance(last, int) else -1
            matched = self._matching_steps(data[name], code, now)
            fresh = [step for step in matched if step > last]
            if matched and not fresh:
                return self._counted(name, Verdict(
                    False, "Replayed", f"this code of {name} was already used: wait for the "
                                       "next one"))
            if fresh:
                state = {"lastStep": max(fresh), "failures": 0}
                verdict = Verdict(True, "Accepted", f"code of {name} accepted")
            else:
                failures = int(state.get("failures") or 0) + 1
                if failures >= MAX_FAILURES:
                    until = now + datetime.timedelta(seconds=LOCKOUT)
                    state = {"lastStep": last, "failures": 0, "lockedUntil": _ts(until)}
                    verdict = Verdict(False, "LockedOut", (
                        f"wrong code of {name}, {MAX_FAILURES} in a row: {name} is locked "
                        f"until {_ts(until)}"))
                else:
                    state = {"lastStep": last, "failures": failures}
                    verdict = Verdict(False, "WrongCode", (
                        f"wrong code of {name} ({failures} of {MAX_FAILURES} in a row before "
                        f"a {LOCKOUT / 60:.0f}-minute lock)"))
                if last < 0:
                    del state["lastStep"]  # no code of this approver accepted yet
            states[name] = state
            try:
                self._replace(self._with_states(secret, states))
            except Conflict:
                continue  # someone judged a code of this Secret meanwhile: judge again
            if verdict.reason == "LockedOut":
                metrics.APPROVER_LOCKOUTS.labels(name).inc()
            metrics.APPROVER_LOCKED.labels(name).set(1 if verdict.reason == "LockedOut" else 0)
            return self._counted(name, verdict)
        raise Conflict(f"Secret {self.namespace}/{self.secret} kept changing while a code of "
                       f"{name} was judged; it will be judged again")

    def _matching_steps(self, encoded_seed: str, code: str, now: datetime.datetime) -> list[int]:
        """The steps (now, one before, one after) whose code is ``code``."""
        if not isinstance(code, str) or not CODE.match(code):
            return []
        try:
            seed = base64.b64decode(encoded_seed).decode()
            totp = pyotp.TOTP(seed)
            current = totp.timecode(now)
            return [step for step in (current - 1, current, current + 1)
                    if otp_utils.strings_equal(code, totp.generate_otp(step))]
        except (binascii.Error, UnicodeDecodeError, ValueError):
            log.error("the seed of an approver in Secret %s/%s is not base32: re-enrol it",
                      self.namespace, self.secret)
            return []

    @staticmethod
    def _counted(name: str, verdict: Verdict) -> Verdict:
        metrics.APPROVALS.labels(verdict.reason).inc()
        return verdict

    # ---- RotationApprovals -------------------------------------------------------------------

    def judge(self, namespace: str, rotating_secret: str, request: str | None, *,
              ended: str | None = None) -> list[Judged]:
        """Judge the RotationApprovals of ``rotating_secret`` (by ``spec.rotatingSecret``;
        the label is for ``kubectl -l``) in ``namespace``. ``request`` is the id in the
        RotatingSecret's ``keyrotor.io/revoke-now`` annotation (None: there is none);
        ``ended`` says how that request ended (Approved, Expired, Rejected), None while it is
        open. Only an approval of the open request has its code verified; every other one is
        rejected without looking at its code (so a wrong one never counts toward a lockout):
        ``NoRequest``, ``OtherRequest`` (another id), ``RequestEnded``. Each is deleted (with
        uid and resourceVersion preconditions) before it is judged: one another replica
        deleted first, or someone edited meanwhile, is left to that replica or to the next
        round. Returns what was judged, oldest first; never a code."""
        listing = self.api.request("GET", approvals_path(namespace), verb="list",
                                   resource=f"{PLURAL}.{GROUP}", namespace=namespace) or {}
        items = [item for item in listing.get("items") or ()
                 if (item.get("spec") or {}).get("rotatingSecret") == rotating_secret]
        items.sort(key=lambda i: (str(i["metadata"].get("creationTimestamp", "")),
                                  str(i["metadata"]["name"])))
        judged = []
        for item in items:
            meta, spec = item["metadata"], item.get("spec") or {}
            if not self._consume(namespace, meta):
                continue
            approver = str(spec.get("approver", ""))
            asked = str(spec.get("request", ""))
            verdict = self._unverified(rotating_secret, spec, asked, request, ended)
            if verdict is None:
                verdict = self.verify(approver, str(spec.get("code", "")))
            else:
                verdict = self._counted(approver, verdict)
            log.info("RotationApproval %s/%s by %s for %s (request %s): %s", namespace,
                     meta["name"], approver, rotating_secret, asked[:63], verdict.reason)
            judged.append(Judged(approval=str(meta["name"]), approver=approver,
                                 request=asked, ok=verdict.ok, reason=verdict.reason,
                                 message=verdict.message))
        return judged

    @staticmethod
    def _unverified(rotating_secret: str, spec: dict[str, Any], asked: str,
                    request: str | None, ended: str | None) -> Verdict | None:
        """The verdict on an approval that names no open request (its code is never looked
        at), or None: it is for the open request, verify its code."""
        if spec.get("action") != ACTION:
            return Verdict(False, "WrongAction",
                           f"action {str(spec.get('action'))[:40]!r} is not {ACTION}")
        if request is None:
            return Verdict(False, "NoRequest", (
                f"no emergency revocation request is open for {rotating_secret} (the approval "
                f"is for request {asked[:63]!r}): start one with keyrotor revoke-now"))
        if asked != request:
            state = "the one in progress" if ended is None else f"ended ({ended})"
            return Verdict(False, "OtherRequest", (
                f"request {asked[:63]!r} is unknown: {request!r} is {rotating_secret}'s "
                f"request, {state}"))
        if ended == "Expired":
            return Verdict(False, "RequestEnded", (
                f"request {request!r} expired before this approval: start a new one with "
                "keyrotor revoke-now"))
        if ended is not None:
            return Verdict(False, "RequestEnded",
                           f"request {request!r} already ended ({ended})")
        return None

    def _consume(self, namespace: str, meta: dict[str, Any]) -> bool:
        """Delete one RotationApproval as it was read; False if it is gone or changed."""
        options = {"apiVersion": "v1", "kind": "DeleteOptions",
                   "preconditions": {"uid": meta.get("uid"),
                                     "resourceVersion": meta.get("resourceVersion")}}
        try:
            answer = self.api.request("DELETE", approvals_path(namespace, meta["name"]),
                                      body=options, verb="delete",
                                      resource=f"{PLURAL}.{GROUP}", namespace=namespace)
        except Conflict:
            return False  # edited since it was listed: the next round judges the new one
        return answer is not None  # None: another replica deleted (and judges) it
