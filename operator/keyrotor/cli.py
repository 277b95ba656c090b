"""The ``keyrotor`` command line: the operator itself, day-two commands, and dev helpers.

Each subcommand is a small function; the heavy lifting lives in the modules it calls, which are
imported lazily so ``keyrotor version`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from keyrotor import __version__


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keyrotor",
        description="Rotate Kubernetes secrets and keys with zero downtime.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=_cmd_version)

    dev = sub.add_parser("dev", help="developer helpers (local control plane)")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True, metavar="WHAT")
    p = dev_sub.add_parser("cluster", help="a local kube-apiserver + etcd built from Go modules")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=_cmd_dev_cluster)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))
