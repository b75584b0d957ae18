"""``spotrun-operator``: run the TrainingRun operator against the current kubeconfig (or
the in-cluster service account)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence

import kopf
from prometheus_client import CollectorRegistry

from spotrun_operator import __version__, config, handlers, kube, metrics
from spotrun_operator.cost import Price, Prices
from spotrun_operator.runner import Memory, PriceSource, Runner, table_prices

log = logging.getLogger("spotrun_operator")

# Flags that override OperatorConfig fields (also settable as SPOTRUN_<NAME> env vars).
_TUNABLES: tuple[tuple[str, type, str], ...] = (
    ("backoff_base_seconds", float, "first delay before the next attempt after a loss"),
    ("backoff_max_seconds", float, "cap of the exponential backoff"),
    ("backoff_jitter", float, "relative +- jitter of the backoff (0.2 = 20%%)"),
    ("failure_settle_seconds", float, "wait for infrastructure evidence before charging a crash"),
    ("node_lost_grace_seconds", float, "how long Ready=Unknown may last before a node is lost"),
    ("config_error_grace_seconds", float, "how long an image pull / missing secret may persist"),
    ("resync_seconds", float, "re-check interval of a run without watch events"),
    ("cost_update_seconds", float, "minimum spacing of cost-only status writes"),
    ("history_limit", int, "attempts kept in status.attempts"),
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="spotrun-operator",
        description="Keeps PyTorch TrainingRuns alive on spot GPUs (kopf operator).",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)"
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (default)"
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: KUBECONFIG or ~/.kube/config)")
    p.add_argument(
        "--liveness",
        metavar="URL",
        help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz",
    )
    p.add_argument(
        "--metrics-port", type=int, default=9100, help="Prometheus /metrics port (0: off)"
    )
    p.add_argument("--metrics-address", default="0.0.0.0", help="Prometheus listen address")
    p.add_argument(
        "--pricing",
        choices=("aws", "table"),
        default="aws",
        help="spot prices from EC2 DescribeSpotPriceHistory (aws) or the built-in table",
    )
    p.add_argument(
        "--restart-on-rebalance",
        action="store_true",
        default=None,
        help="treat a rebalance recommendation like an interruption notice",
    )
    p.add_argument("--workers", type=int, default=8, help="reconcile threads")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"spotrun-operator {__version__}")
    for name, typ, text in _TUNABLES:
        p.add_argument(f"--{name.replace('_', '-')}", type=typ, default=None, help=text)
    return p.parse_args(argv)


def aws_prices() -> PriceSource:
    """Spot prices from AWS (cached, refreshed in the background of reconciles), with the
    PricingAvailable condition telling runs when the figures are only estimates."""
    from spotrun_operator.pricing import PriceBook

    book = PriceBook()

    def source(types: Sequence[str]) -> tuple[Mapping[str, Price] | Prices, Mapping[str, str]]:
        snap = book.snapshot(types)
        cond = snap.condition()
        return snap, {
            "type": "PricingAvailable",
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message,
        }

    return source


def build_runner(args: argparse.Namespace, registry: CollectorRegistry) -> Runner:
    overrides = {name: getattr(args, name) for name, _, _ in _TUNABLES}
    overrides["restart_on_rebalance"] = args.restart_on_rebalance
    cfg = config.with_overrides(config.from_env(), overrides)
    api = kube.load_api_client(args.kubeconfig)
    prices = aws_prices() if args.pricing == "aws" else table_prices
    return Runner(
        kube.Kube(api),
        cfg,
        metrics.Metrics(registry),
        Memory(),
        prices=prices,
        workers=args.workers,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    kopf.configure(verbose=args.verbose)
    if not args.verbose:
        # kopf logs every handled watch event at INFO; keep the log to our decisions.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.kubeconfig:
        # kopf's own login reads KUBECONFIG; keep both clients on the same cluster.
        os.environ["KUBECONFIG"] = args.kubeconfig
    registry = CollectorRegistry()
    runner = build_runner(args, registry)
    if args.metrics_port:
        metrics.serve(registry, args.metrics_port, args.metrics_address)
    kopf_registry = kopf.OperatorRegistry()
    handlers.register(kopf_registry, runner)
    settings = kopf.OperatorSettings()
    handlers.configure(settings)
    log.info("spotrun-operator %s starting (%s)", __version__, runner.cfg)
    kopf.run(
        registry=kopf_registry,
        settings=settings,
        standalone=True,  # one replica (Recreate strategy): no peering CRDs needed
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
