"""``keyrotor approvers add/list/remove``, ``keyrotor revoke-now`` and ``keyrotor approve``.

The commands behind an emergency revocation (see :mod:`keyrotor.approvals`). They talk to the
API server only: the operator judges every code. Registered in :mod:`keyrotor.cli` by
:func:`add_parsers`; heavy imports stay inside the commands.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import io
import re
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keyrotor.kube import KubeApi

OPERATOR_NAMESPACE = "keyrotor-system"
CODE = re.compile(r"^[0-9]{6,8}$")
REVOKE_WARNING = (
    "An emergency revocation issues a new version and revokes every older one AT ONCE, "
    "skipping the overlap: presenters still on an old key fail immediately. That is the point "
    "when a key has leaked.")


def _api(args: argparse.Namespace) -> KubeApi:
    from keyrotor.kube import KubeApi, load_client

    return KubeApi(load_client(args.kubeconfig, args.context))


def _fail(message: str) -> int:
    print(f"keyrotor: {message}", file=sys.stderr)
    return 1


# ---- approvers ---------------------------------------------------------------------------------

def _approvers(args: argparse.Namespace) -> Any:
    from keyrotor.approvals import Approvers

    return Approvers(_api(args), namespace=args.operator_namespace)


def qr_text(uri: str) -> str:
    """The QR code of ``uri`` for a terminal (Unicode half blocks, quiet zone included)."""
    import segno

    out = io.StringIO()
    segno.make(uri, error="m").terminal(out=out, compact=True)
    return out.getvalue()


def _cmd_approvers_add(args: argparse.Namespace) -> int:
    from keyrotor.approvals import ApproverExists
    from keyrotor.errors import KeyrotorError

    try:
        uri = _approvers(args).add(args.name, issuer=args.issuer, replace=args.replace)
    except (ApproverExists, ValueError, KeyrotorError) as exc:
        return _fail(str(exc))
    print(f"Approver {args.name} enrolled (Secret {args.operator_namespace}/keyrotor-approvers)."
          "\nScan this QR code with an authenticator app (TOTP, 6 digits, 30 seconds):\n")
    print(qr_text(uri), end="")
    print(f"\nor enter this URI by hand:\n{uri}\n")
    print("WARNING: the seed is shown only now: keyrotor never shows it again. Clear this "
          "terminal's scroll-back once it is scanned. A lost seed: `keyrotor approvers add "
          f"{args.name} --replace` (the old one stops working).")
    return 0


def _cmd_approvers_list(args: argparse.Namespace) -> int:
    from keyrotor.errors import KeyrotorError

    try:
        found = _approvers(args).info()
    except KeyrotorError as exc:
        return _fail(str(exc))
    if not found:
        print(f"no approvers enrolled in {args.operator_namespace}/keyrotor-approvers")
        return 0
    now = datetime.datetime.now(datetime.UTC)
    rows = [("NAME", "LAST APPROVAL", "WRONG CODES", "LOCKED UNTIL")]
    for a in found:
        rows.append((
            a.name,
            a.last_accepted.strftime("%Y-%m-%dT%H:%M:%SZ") if a.last_accepted else "never",
            str(a.failures),
            a.locked_until.strftime("%Y-%m-%dT%H:%M:%SZ")
            if a.locked_until and a.locked_until > now else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _cmd_approvers_remove(args: argparse.Namespace) -> int:
    from keyrotor.errors import KeyrotorError

    try:
        removed = _approvers(args).remove(args.name)
    except KeyrotorError as exc:
        return _fail(str(exc))
    if not removed:
        return _fail(f"no approver {args.name!r} in {args.operator_namespace}/keyrotor-approvers")
    print(f"approver {args.name} removed; codes from its app are refused from now on")
    return 0


# ---- revoke-now / approve ---------------------------------------------------------------------

def request_in_progress(obj: dict[str, Any]) -> str | None:
    """The id of the emergency revocation request of RotatingSecret ``obj`` that is still
    open (annotated, and not ended in the status), or None."""
    from keyrotor.approvals import REQUEST_ANNOTATION

    asked = ((obj.get("metadata") or {}).get("annotations") or {}).get(REQUEST_ANNOTATION)
    emergency = (obj.get("status") or {}).get("emergency") or {}
    if asked and (emergency.get("request") != asked or not emergency.get("lastResult")):
        return str(asked)
    return None


def _valid(status: dict[str, Any]) -> list[int]:
    return sorted({int(status[k]) for k in ("currentVersion", "previousVersion", "nextVersion")
                   if status.get(k) is not None})


def progress(obj: dict[str, Any], request: str | None) -> tuple[list[str], int, str | None]:
    """Who approved ``request`` so far, how many approvals it needs and when it expires.
    From ``status.emergency`` when it is about that request (the operator's count, with the
    spec as it last judged); else nobody yet, the spec's count, and no expiry (the operator
    has not seen the request yet)."""
    emergency = (obj.get("status") or {}).get("emergency") or {}
    spec = (obj.get("spec") or {}).get("emergency") or {}
    required = int(spec.get("approvals") or 1)
    if request is None or emergency.get("request") != request:
        return [], required, None
    expiry = emergency.get("expiryTime")
    return ([str(a) for a in emergency.get("approvedBy") or ()],
            int(emergency.get("required") or required),
            re.sub(r"\.[0-9]+Z$", "Z", expiry) if isinstance(expiry, str) else None)


def progress_text(approved: Sequence[str], required: int, expiry: str | None) -> str:
    """``1 of 2 approvals, expires at 2026-12-03T08:40:00Z``."""
    return f"{len(approved)} of {required} approvals" + (
        f", expires at {expiry}" if expiry else "")


def _read_code(args: argparse.Namespace) -> str:
    if args.code == "-":
        code = sys.stdin.readline()
    elif args.code:
        code = args.code
    else:
        code = getpass.getpass(f"TOTP code of {args.approver}: ")
    return code.strip()


def _cmd_revoke_now(args: argparse.Namespace) -> int:
    return _send_approval(args, start=True)


def _cmd_approve(args: argparse.Namespace) -> int:
    return _send_approval(args, start=False)


def _send_approval(args: argparse.Namespace, *, start: bool) -> int:
    from keyrotor.approvals import (
        APPROVAL_LABEL,
        PLURAL,
        REQUEST_ANNOTATION,
        approval_body,
        approvals_path,
        check_name,
    )
    from keyrotor.errors import KeyrotorError
    from keyrotor.kube import GROUP

    where = f"{args.namespace}/{args.name}"
    try:
        check_name(args.approver)
    except ValueError as exc:
        return _fail(str(exc))
    api = _api(args)
    try:
        obj = api.get_rotating_secret(args.namespace, args.name)
        if obj is None:
            return _fail(f"RotatingSecret {where} not found")
        request = request_in_progress(obj)
        if request is None and not start:
            return _fail(f"no emergency revocation request is in progress for {where}: start "
                         f"one with `keyrotor revoke-now {args.name} -n {args.namespace} "
                         "--approver NAME`")
        code = _read_code(args)
        if not CODE.match(code):
            return _fail("a TOTP code is 6 to 8 digits")
        before = {e["metadata"]["uid"] for e in api.list_events(args.namespace, args.name)}
        emergency = (obj.get("status") or {}).get("emergency") or {}
        earlier = set(emergency.get("approvedBy") or ()) \
            if request is not None and emergency.get("request") == request else set()
        if request is None:
            stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
            request = f"r{stamp}-{secrets.token_hex(3)}"
            api.annotate_rotating_secret(args.namespace, args.name, REQUEST_ANNOTATION,
                                         request)
            print(f"emergency revocation of {where} requested: request {request}, "
                  f"{progress(obj, None)[1]} approval(s) needed")
            print(REVOKE_WARNING)
        else:
            print(f"approving emergency revocation request {request} of {where} "
                  f"({progress_text(*progress(obj, request))})")
        try:
            created = api.request(
                "POST", approvals_path(args.namespace), verb="create",
                resource=f"{PLURAL}.{GROUP}", namespace=args.namespace,
                body=approval_body(rotating_secret=args.name, request=request,
                                   approver=args.approver, code=code)) or {}
        except KeyrotorError:
            raise
        except Exception as exc:  # an API refusal (422): its message, never the code
            if getattr(exc, "status", None) in (400, 422):
                return _fail(f"the API server refused the RotationApproval: "
                             f"{str(exc).replace(code, '******')[:600]}")
            raise
        approval = str((created.get("metadata") or {}).get("name", ""))
        print(f"approval by {args.approver} sent (RotationApproval {approval}, label "
              f"{APPROVAL_LABEL}={args.name}); the operator judges it and deletes it")
        if args.wait <= 0:
            return 0
        return follow(api, args.namespace, args.name, approval=approval, request=request,
                      approver=args.approver, wait=args.wait, seen=before, earlier=earlier,
                      versions=_valid(obj.get("status") or {}))
    except KeyrotorError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("\nstopped following; the request stays open until spec.emergency.requestTTL "
              "runs out", file=sys.stderr)
        return 130


def follow(api: KubeApi, namespace: str, name: str, *, approval: str, request: str,
           approver: str, wait: float, seen: set[str], earlier: set[str] | None = None,
           versions: Sequence[int] = (), interval: float = 0.5,
           out: Callable[[str], None] = print) -> int:
    """Print the request's progress (status.emergency, new events of the RotatingSecret)
    until it ends or ``wait`` seconds pass. 0: revoked, or this approval accepted and the
    request waiting for others; 1: rejected, expired, or not judged in time. ``seen``: the
    events already there; ``earlier``: who had approved this request before; ``versions``:
    the versions valid before (revoked by an approval)."""
    from keyrotor.approvals import PLURAL, approvals_path
    from keyrotor.kube import GROUP

    deadline = time.monotonic() + wait
    shown: dict[str, Any] | None = None
    revoking = list(versions)  # the versions an approval revokes (as last seen)
    judged_at: float | None = None
    accepted = rejected = False
    while True:
        obj = api.get_rotating_secret(namespace, name) or {}
        status = obj.get("status") or {}
        emergency = status.get("emergency") or {}
        events = sorted((e for e in api.list_events(namespace, name)
                         if e["metadata"]["uid"] not in seen
                         and (e.get("involvedObject") or {}).get("kind") == "RotatingSecret"),
                        key=lambda e: int(e["metadata"].get("resourceVersion") or 0))
        for event in events:
            seen.add(event["metadata"]["uid"])
            message = str(event.get("message", ""))
            out(f"  {event.get('type')} {event.get('reason')}: {message}")
            if event.get("reason") in ("ApprovalRejected", "ApproverLocked") and \
                    message.startswith((f"approval by {approver} ", f"{approver} already")):
                rejected = True
        ours = emergency.get("request") == request
        if not emergency.get("lastResult"):
            revoking = [int(v) for v in emergency.get("revoking") or ()] or _valid(status)
        approved_by, required, expiry = progress(obj, request)
        if judged_at is None and api.request(
                "GET", approvals_path(namespace, approval), verb="get",
                resource=f"{PLURAL}.{GROUP}", namespace=namespace) is None:
            judged_at = time.monotonic()
        if ours and emergency != shown:
            shown = emergency
            result = emergency.get("lastResult")
            if not result and status.get("phase") != "EmergencyRevoking":
                line = progress_text(approved_by, required, expiry)
                if approved_by:
                    line = f"approved by {', '.join(approved_by)}: {line}"
                    if len(approved_by) < required:
                        line += (f"; another approver runs `keyrotor approve {name} -n "
                                 f"{namespace} --approver B`")
                out(line)
            elif status.get("phase") == "EmergencyRevoking":
                out(f"approved by {', '.join(approved_by)}: revoking now")
        if approver in approved_by and approver not in (earlier or set()):
            accepted = True
        if ours and emergency.get("lastResult") == "Approved":
            old = ", ".join(str(v) for v in revoking) or "none"
            out(f"version {status.get('currentVersion')} is current; versions {old} revoked")
            return 0
        if ours and emergency.get("lastResult") in ("Expired", "Rejected"):
            out(f"request {request} ended: {emergency['lastResult']}")
            return 1
        if rejected and not accepted:
            out(f"the approval by {approver} was rejected (see the event above)")
            return 1
        if judged_at is not None and not accepted and time.monotonic() - judged_at > 15:
            out(f"the approval by {approver} was judged but not counted (see the events)")
            return 1
        if time.monotonic() >= deadline:
            if accepted:
                until = f"it expires at {expiry}" if expiry else \
                    "until spec.emergency.requestTTL runs out"
                out(f"request {request} is waiting for {required - len(approved_by)} more "
                    f"approval(s) ({until})")
                return 0
            if judged_at is None:
                # Not judged: take the code back rather than leave it waiting in etcd.
                api.request("DELETE", approvals_path(namespace, approval), verb="delete",
                            resource=f"{PLURAL}.{GROUP}", namespace=namespace)
                out(f"no judgement within {wait:.0f}s: is the operator running and watching "
                    f"{namespace}? RotationApproval {approval} deleted; run the command again "
                    "with a new code")
            return 1
        time.sleep(interval)


def add_parsers(sub: Any, client_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """The commands, on ``keyrotor``'s subparsers."""
    approvers = sub.add_parser(
        "approvers", help="enrol, list and remove the TOTP approvers of emergency revocations",
        description="Approvers approve emergency revocations (keyrotor revoke-now) with a TOTP "
                    "code from an authenticator app. Their seeds live in the Secret "
                    "keyrotor-approvers in the operator's namespace.")
    approvers_sub = approvers.add_subparsers(dest="approvers_command", required=True,
                                             metavar="ACTION")

    def operator_namespace(p: argparse.ArgumentParser) -> None:
        p.add_argument("--operator-namespace", default=OPERATOR_NAMESPACE, metavar="NS",
                       help=f"the operator's namespace (default {OPERATOR_NAMESPACE})")
        client_flags(p)

    p = approvers_sub.add_parser(
        "add", help="enrol an approver: prints the provisioning URI and a QR code, once")
    p.add_argument("name", help="the approver's name (lowercase, e.g. alice)")
    p.add_argument("--issuer", default="keyrotor",
                   help="the issuer the authenticator app shows (default keyrotor)")
    p.add_argument("--replace", action="store_true",
                   help="give an enrolled approver a new seed (the old one stops working)")
    operator_namespace(p)
    p.set_defaults(func=_cmd_approvers_add)
    p = approvers_sub.add_parser("list", help="the enrolled approvers and their lockouts")
    operator_namespace(p)
    p.set_defaults(func=_cmd_approvers_list)
    p = approvers_sub.add_parser("remove", help="unenrol an approver")
    p.add_argument("name")
    operator_namespace(p)
    p.set_defaults(func=_cmd_approvers_remove)

    def approval_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("name", help="the RotatingSecret")
        p.add_argument("-n", "--namespace", default="default")
        p.add_argument("--approver", required=True, help="your approver name")
        p.add_argument("--code", help="your current TOTP code; '-' reads it from stdin "
                                      "(default: prompt without echo)")
        p.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                       help="follow the request's progress this long (default 60; 0: do not)")
        client_flags(p)

    p = sub.add_parser(
        "revoke-now", help="emergency revocation: a new version now, the old ones revoked at "
                           "once (presenters still on them fail: that is the point)",
        description=f"{REVOKE_WARNING} It needs spec.emergency.approvals different approvers "
                    "(default 1): this command starts the request (or joins the one in "
                    "progress) with your approval; the others run `keyrotor approve`.")
    approval_flags(p)
    p.set_defaults(func=_cmd_revoke_now)
    p = sub.add_parser(
        "approve", help="approve the emergency revocation request in progress",
        description=f"Adds your approval to the request `keyrotor revoke-now` started. "
                    f"{REVOKE_WARNING}")
    approval_flags(p)
    p.set_defaults(func=_cmd_approve)
