"""The ``keyrotor`` command line: the operator itself, day-two commands, and dev helpers.

Each subcommand is a small function; the heavy lifting lives in the modules it calls, which are
imported lazily so ``keyrotor version`` stays instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from keyrotor import __version__

if TYPE_CHECKING:
    from keyrotor.kube import KubeApi


def _cmd_version(args: argparse.Namespace) -> int:
    print(f"keyrotor {__version__}")
    return 0


def _cmd_dev_cluster(args: argparse.Namespace) -> int:
    from keyrotor.testing import devcluster

    if args.action == "up":
        kubeconfig = devcluster.up()
        state = devcluster.status() or {}
        print(f"control plane ready at {state.get('url')} "
              f"(started in {state.get('ready_seconds', '?')}s)")
        print(f"export KUBECONFIG={kubeconfig}")
    elif args.action == "down":
        print("stopped" if devcluster.down() else "no dev control plane was running")
    else:
        running = devcluster.status()
        if running is None:
            print("no dev control plane is running")
            return 1
        print(f"running at {running['url']}, kubeconfig {running['kubeconfig']}")
    return 0


def _pod_url(port: int) -> str | None:
    """http://POD_IP:port from the downward API's $POD_IP (IPv6 in brackets), if set."""
    ip = os.environ.get("POD_IP")
    if not ip:
        return None
    return f"http://[{ip}]:{port}" if ":" in ip else f"http://{ip}:{port}"


def _cmd_run(args: argparse.Namespace) -> int:
    if args.kubeconfig:
        # Before kopf and kubernetes are imported: they read $KUBECONFIG at import time.
        os.environ["KUBECONFIG"] = args.kubeconfig
    from keyrotor import kubehttp

    kubehttp.keep_official_client_out()  # before kopf: it would import it (tens of MB)
    from keyrotor.leadership import LeaseConfig, default_identity
    from keyrotor.runner import run

    if args.no_audit_stdout and not args.audit_log:
        print("keyrotor run: --no-audit-stdout needs --audit-log (the audit trail needs a "
              "sink)", file=sys.stderr)
        return 2
    lease = None
    if args.leader_elect:
        try:
            lease = LeaseConfig(
                namespace=args.leader_election_namespace or os.environ.get("POD_NAMESPACE")
                or "keyrotor-system",
                name=args.leader_election_id or (
                    f"keyrotor-shard-{args.shard}" if args.shard else "keyrotor"),
                identity=args.leader_election_identity
                or default_identity(), lease_duration=args.lease_duration,
                renew_deadline=args.renew_deadline, retry_period=args.retry_period,
                advertise_url=args.advertise_url or _pod_url(args.liveness_port))
        except ValueError as exc:
            print(f"keyrotor run: {exc}", file=sys.stderr)
            return 2
    run(namespaces=args.namespace or (), metrics_port=args.metrics_port,
        liveness_port=args.liveness_port, log_format=args.log_format, verbose=args.verbose,
        kubeconfig=args.kubeconfig, phase_pause=args.phase_pause,
        restart_debounce=args.restart_debounce, lease=lease, workers=args.workers,
        shard=args.shard, other_shards=[s for s in (args.other_shards or "").split(",") if s],
        audit_log=args.audit_log, audit_stdout=not args.no_audit_stdout,
        audit_head_configmap=args.audit_head_configmap)
    return 0


def _api(args: argparse.Namespace) -> KubeApi:
    from keyrotor.kube import KubeApi, load_client

    return KubeApi(load_client(args.kubeconfig, args.context))


def _cmd_status(args: argparse.Namespace) -> int:
    from keyrotor.report import status_table

    items = _api(args).list_rotating_secrets(None if args.all_namespaces else args.namespace)
    print(status_table(items), end="")
    return 0


def _cmd_rotate(args: argparse.Namespace) -> int:
    import datetime

    from keyrotor.reconciler import TRIGGER_ANNOTATION

    api = _api(args)
    if api.get_rotating_secret(args.namespace, args.name) is None:
        print(f"RotatingSecret {args.namespace}/{args.name} not found", file=sys.stderr)
        return 1
    value = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    api.annotate_rotating_secret(args.namespace, args.name, TRIGGER_ANNOTATION, value)
    print(f"rotation of {args.namespace}/{args.name} requested ({TRIGGER_ANNOTATION}={value})")
    return 0


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from keyrotor.audit import Head, HeadStore, operator_namespace, verify
    from keyrotor.errors import KeyrotorError

    head = None
    try:
        if args.head:
            head = Head.parse(args.head)
        elif args.head_from_cluster:
            store = HeadStore(_api(args), args.namespace or operator_namespace(),
                              args.configmap)
            head = store.read()
            if head is None:
                print(f"keyrotor audit verify: no head in {store.where}", file=sys.stderr)
                return 2
    except (ValueError, KeyrotorError) as exc:
        print(f"keyrotor audit verify: {exc}", file=sys.stderr)
        return 2
    try:
        if args.file == "-":  # e.g. kubectl logs ... | grep keyrotor.io/audit/v1 | ... -
            verdict = verify(sys.stdin.buffer, head)
        else:
            with open(args.file, "rb") as lines:
                verdict = verify(lines, head)
    except OSError as exc:
        print(f"keyrotor audit verify: {exc}", file=sys.stderr)
        return 2
    print(f"{args.file}: {verdict.message}")
    return 0 if verdict.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keyrotor",
        description="Rotate Kubernetes secrets and keys with zero downtime.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=_cmd_version)

    def client_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster or $KUBECONFIG)")
        p.add_argument("--context", help="kubeconfig context")

    p = sub.add_parser("run", help="run the operator")
    p.add_argument("-n", "--namespace", action="append",
                   help="watch this namespace (repeatable; default: all namespaces)")
    p.add_argument("--metrics-port", type=int, default=8080, help="Prometheus port (0: off)")
    p.add_argument("--liveness-port", type=int, default=8081,
                   help="health port: /healthz (alive) and /readyz (0: off)")
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument("--workers", type=int, default=16, metavar="N",
                   help="reconciles that may run at once (default 16)")
    p.add_argument("--shard", metavar="NAME",
                   help="handle only RotatingSecrets labelled keyrotor.io/shard=NAME (each "
                        "shard has its own Lease)")
    p.add_argument("--other-shards", metavar="A,B",
                   help="without --shard: leave the RotatingSecrets of these shards alone")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster or $KUBECONFIG)")
    p.add_argument("--phase-pause", type=float, default=0.0, metavar="SECONDS",
                   help="slow motion for demos and crash tests: stay this long in each phase")
    p.add_argument("--restart-debounce", type=float, default=None, metavar="SECONDS",
                   help="rollout restarts of one workload requested within this window are "
                        "merged into one (default 10)")
    audit_flags = p.add_argument_group(
        "audit trail", "one hash-chained JSON line per action, on stdout and in a file; the "
        "chain head in a ConfigMap of the operator's namespace (keyrotor audit verify)")
    audit_flags.add_argument("--audit-log", metavar="PATH",
                             help="also append the audit trail to this file (default: stdout "
                                  "only)")
    audit_flags.add_argument("--no-audit-stdout", action="store_true",
                             help="do not write the audit trail to stdout (needs --audit-log)")
    audit_flags.add_argument("--audit-head-configmap", metavar="NAME",
                             help="ConfigMap keeping the chain head (default "
                                  "keyrotor-audit-head, keyrotor-audit-head-shard-NAME with "
                                  "--shard; empty: none)")
    election = p.add_argument_group(
        "leader election", "several replicas: only the holder of a coordination.k8s.io Lease "
        "reconciles; the others stand by and take over when it is not renewed")
    election.add_argument("--leader-elect", action="store_true",
                          help="enable leader election (needed with more than one replica)")
    election.add_argument("--leader-election-namespace", metavar="NS",
                          help="the Lease's namespace (default: $POD_NAMESPACE, else "
                               "keyrotor-system)")
    election.add_argument("--leader-election-id", metavar="NAME",
                          help="the Lease's name (default keyrotor, or keyrotor-shard-NAME)")
    election.add_argument("--leader-election-identity", metavar="ID",
                          help="this replica's identity (default: $POD_NAME, else host-pid)")
    election.add_argument("--lease-duration", type=float, default=15.0, metavar="SECONDS",
                          help="a standby takes over a Lease not renewed for this long "
                               "(default 15)")
    election.add_argument("--renew-deadline", type=float, default=10.0, metavar="SECONDS",
                          help="the leader stops if it could not renew for this long "
                               "(default 10)")
    election.add_argument("--retry-period", type=float, default=2.0, metavar="SECONDS",
                          help="how often the Lease is renewed or tried (default 2)")
    election.add_argument("--advertise-url", metavar="URL",
                          help="where this replica answers decoy reports, published on the "
                               "Lease while it leads so a standby can hand reports on "
                               "(default: http://$POD_IP:LIVENESS_PORT when POD_IP is set)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("status", help="a table of every RotatingSecret and its rotation")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    client_flags(p)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("rotate", help="rotate a RotatingSecret now")
    p.add_argument("name")
    p.add_argument("-n", "--namespace", default="default")
    client_flags(p)
    p.set_defaults(func=_cmd_rotate)

    from keyrotor import approvalcli  # approvers, revoke-now, approve (imports nothing heavy)

    approvalcli.add_parsers(sub, client_flags)

    audit = sub.add_parser("audit", help="the audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="WHAT")
    p = audit_sub.add_parser(
        "verify", help="check an audit file's hash chain and, with a head, that nothing was "
                       "cut off its end; exit 1 naming the first bad line")
    p.add_argument("file", help="the audit file (-: standard input)")
    heads = p.add_mutually_exclusive_group()
    heads.add_argument("--head", metavar="SEQ:HASH", help="the chain head to check the end "
                                                          "against")
    heads.add_argument("--head-from-cluster", action="store_true",
                       help="read the head from the operator's ConfigMap")
    p.add_argument("--namespace", help="the operator's namespace (default: $POD_NAMESPACE, "
                                       "else keyrotor-system)")
    p.add_argument("--configmap", default="keyrotor-audit-head",
                   help="the head's ConfigMap (default keyrotor-audit-head)")
    client_flags(p)
    p.set_defaults(func=_cmd_audit_verify)

    dev = sub.add_parser("dev", help="developer helpers (local control plane)")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True, metavar="WHAT")
    p = dev_sub.add_parser("cluster", help="a local kube-apiserver + etcd built from Go modules")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=_cmd_dev_cluster)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))
