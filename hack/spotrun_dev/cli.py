"""``spotrun-dev``: the local cluster and the EKS behaviours to inject into it."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Final

from kubernetes import client

from spotrun_dev import cluster, inject, paths, plans, real_interrupt, realnodes, traces


def _core() -> client.CoreV1Api:
    if not paths.KUBECONFIG.exists():
        raise SystemExit(f"no local cluster: {paths.KUBECONFIG} is missing (run `make cluster-up`)")
    return client.CoreV1Api(
        cluster.LocalCluster(cluster.CLUSTER_NAME, paths.KUBECONFIG).api_client()
    )


# Options of `interrupt` that only kwok nodes honour: (dest, flag, value that a real node
# does anyway, why a real node cannot). The real path (real_interrupt) runs NTH's IMDS-mode
# writes, kills the instance right after them and always deletes its Node.
_KWOK_ONLY: Final[tuple[tuple[str, str, object, str], ...]] = (
    ("mode", "--mode", "imds", "real nodes get NTH's IMDS-mode writes"),
    ("instance_dies_after", "--instance-dies-after", None,
     "the instance dies as soon as the signal's writes are done"),
    ("termination_grace_period", "--termination-grace-period", None,
     "it is Karpenter's, which real nodes do not run"),
    ("keep_node", "--keep-node", False, "the instance always dies and its Node is deleted"),
)  # fmt: skip


def _parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The command line and its ``interrupt`` subcommand, whose usage its errors print."""
    p = argparse.ArgumentParser(prog="spotrun-dev", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log every step")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("up", help="build the binaries and bring the local cluster up (idempotent)")
    sub.add_parser("down", help="delete the local cluster and stop the training operator")
    sub.add_parser(
        "fleet",
        help="restore the fleet: recreate lost kwok nodes, clear taints; replace dead real nodes",
    )
    sub.add_parser("nodes", help="list the real nodes (name, address, zone, pids)")
    sub.add_parser("kubeconfig", help="print the local cluster's kubeconfig path")

    i = sub.add_parser("interrupt", help="take a node away the way a real component does")
    _add_interrupt(i)

    f = sub.add_parser("fail", help="make a pod's containers fail as the kubelet reports it")
    f.add_argument("pod")
    f.add_argument("-n", "--namespace", default="default")
    f.add_argument("--reason", choices=traces.FAIL_REASONS, required=True)

    c = sub.add_parser("complete", help="make a pod's containers exit 0")
    c.add_argument("pod")
    c.add_argument("-n", "--namespace", default="default")
    return p, i


def _real_node_error(args: argparse.Namespace) -> str | None:
    """Why ``interrupt`` cannot do what ``args`` ask on a real node (None: it can)."""
    if args.signal not in real_interrupt.REAL_SIGNALS:
        return (
            f"argument --signal: {args.signal!r} is not supported on real node {args.node} "
            f"(choose from {', '.join(real_interrupt.REAL_SIGNALS)}; the others run on kwok nodes)"
        )
    for dest, flag, does_anyway, why in _KWOK_ONLY:
        if getattr(args, dest) != does_anyway:
            return f"argument {flag}: not supported on real node {args.node}: {why}"
    return None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line; a signal or option a real node cannot honour is a usage
    error (exit 2), found before anything touches the cluster."""
    parser, interrupt = _parsers()
    args = parser.parse_args(argv)
    if args.command == "interrupt" and args.node.startswith(realnodes.REAL_PREFIX):
        error = _real_node_error(args)
        if error is not None:
            interrupt.error(error)
    return args


def _add_interrupt(i: argparse.ArgumentParser) -> None:
    """The options of ``spotrun-dev interrupt``."""
    i.add_argument("node")
    i.add_argument(
        "--signal",
        choices=traces.SIGNALS,
        default="nth",
        help="which component's path; docs/signals.md lists what each one writes. On a "
        "real node (real-spot-N): nth, loss or shutdown, done for real (real evictions, "
        "SIGTERMs, kills); `spotrun-dev fleet` starts the replacement",
    )
    i.add_argument(
        "--mode",
        choices=plans.MODES,
        default="imds",
        help="NTH's mode: imds (DaemonSet reading instance metadata) or queue (SQS): the "
        "event id differs, and a queue-mode rebalance recommendation drains (real nodes: "
        "imds only)",
    )
    i.add_argument(
        "--instance-dies-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds from the notice until the instance dies (default: the notice's "
        "remainder, 120 s for EC2 spot, 30 s for AKS; 0 for signals with no notice); kwok "
        "nodes only",
    )
    i.add_argument(
        "--real-node-lifecycle",
        action="store_true",
        help="wait for kube-controller-manager to mark the dead node NotReady (its "
        "node-monitor-grace-period) instead of writing its conditions and taints at once "
        "(what real nodes always do)",
    )
    i.add_argument(
        "--termination-grace-period",
        type=int,
        default=None,
        metavar="SECONDS",
        help="Karpenter: the NodePool's terminationGracePeriod; pods whose grace does not "
        "fit are force-deleted with the time left (default: none, Karpenter waits); kwok "
        "nodes only",
    )
    i.add_argument(
        "--keep-node",
        action="store_true",
        help="stop before the instance dies (Karpenter: the node stays deleting, held by "
        "its finalizer); kwok nodes only",
    )


def _interrupt(args: argparse.Namespace) -> None:
    opts = plans.Options(
        mode=args.mode,
        play_node_lifecycle=not args.real_node_lifecycle,
        termination_grace_period=args.termination_grace_period,
    )
    writes = inject.interrupt(
        _core(),
        args.node,
        args.signal,
        delete_node_after=not args.keep_node,
        instance_dies_after=args.instance_dies_after,
        opts=opts,
    )
    for w in writes:
        print(f"{w.actor}\t{w.call}\t{[dict(c) for c in w.changes]}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
    )
    try:
        if args.command == "up":
            c = cluster.ensure_cluster()
            print(f"cluster {c.name} is up; export KUBECONFIG={c.kubeconfig}")
        elif args.command == "down":
            cluster.delete_cluster()
        elif args.command == "fleet":
            cluster.ensure_fleet(_core())
            realnodes.ensure_real_nodes(_core())
        elif args.command == "nodes":
            for n in realnodes.FleetState.load().real_nodes():
                print(f"{n.name}\t{n.role}\t{n.ip}\t{n.zone}\tpods {n.pod_cidr}")
        elif args.command == "kubeconfig":
            print(paths.KUBECONFIG)
        elif args.command == "interrupt" and args.node.startswith(realnodes.REAL_PREFIX):
            real_interrupt.interrupt_real(_core(), args.node, args.signal)
        elif args.command == "interrupt":
            _interrupt(args)
        elif args.command == "fail":
            inject.fail_pod(_core(), args.namespace, args.pod, args.reason)
        elif args.command == "complete":
            inject.complete_pod(_core(), args.namespace, args.pod)
    except cluster.ClusterError as exc:
        print(f"spotrun-dev: {exc}", file=sys.stderr)
        return 1
    except client.ApiException as exc:
        print(
            f"spotrun-dev: Kubernetes API error {exc.status}: {exc.reason}: {exc.body}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
