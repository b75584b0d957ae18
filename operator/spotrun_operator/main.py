"""``spotrun-operator``: run the TrainingRun operator against the current kubeconfig (or
the in-cluster service account)."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import kopf
from prometheus_client import CollectorRegistry

from spotrun_operator import __version__, handlers
from spotrun_operator.facts import config
from spotrun_operator.kubeio import connection, kube, leader
from spotrun_operator.kubeio.election import ElectionConfig
from spotrun_operator.kubeio.leases import Leases
from spotrun_operator.money.aws_prices import PricingConfig
from spotrun_operator.money.cost import Price, Prices, price_table
from spotrun_operator.money.pricing import PriceBook
from spotrun_operator.money.pricing_background import BackgroundPriceBook
from spotrun_operator.runner import Runner
from spotrun_operator.telemetry import client_metrics, metrics
from spotrun_operator.watching.memory import Memory
from spotrun_operator.watching.observe import PriceSource

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
    ("notice_stop_margin_seconds", float, "seconds of a spot notice kept for the graceful stop"),
    ("spare_pull_images", str, "images each warm spare pulls besides the run's, comma-separated"),
)


def _on_demand_price(text: str) -> tuple[str, float]:
    itype, sep, usd = text.partition("=")
    try:
        value = float(usd)
    except ValueError:
        value = float("nan")
    if not (sep and itype.strip() and math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected TYPE=USD_PER_HOUR (> 0), got {text!r}")
    return itype.strip(), value


def _on_demand_env(text: str) -> list[tuple[str, float]]:
    return [_on_demand_price(item) for item in text.split(",") if item.strip()]


def _env_float(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value else None


def _pricing_flags(p: argparse.ArgumentParser) -> None:
    """Where spot prices come from, and the on-demand table ([cost.md](../docs/cost.md))."""
    p.add_argument(
        "--pricing",
        choices=("aws", "table"),
        default=os.environ.get("SPOTRUN_PRICING") or "aws",
        help="spot prices from EC2 DescribeSpotPriceHistory (aws) or the built-in table",
    )
    p.add_argument(
        "--aws-endpoint-url",
        metavar="URL",
        default=os.environ.get("SPOTRUN_AWS_ENDPOINT_URL") or None,
        help="EC2 endpoint asked for spot prices (a VPC endpoint, a test server); default: "
        "boto3's (AWS_ENDPOINT_URL_EC2, else the region's)",
    )
    p.add_argument(
        "--aws-region",
        default=os.environ.get("SPOTRUN_AWS_REGION") or None,
        help="region of the spot prices; default: AWS_DEFAULT_REGION, AWS_REGION, AWS config",
    )
    p.add_argument(
        "--on-demand-price",
        action="append",
        type=_on_demand_price,
        metavar="TYPE=USD",
        default=_on_demand_env(os.environ.get("SPOTRUN_ON_DEMAND_PRICES", "")),
        help="on-demand USD per hour of an instance type, over the built-in us-east-1 list "
        "prices (repeatable; env SPOTRUN_ON_DEMAND_PRICES=TYPE=USD,TYPE=USD)",
    )
    p.add_argument(
        "--spot-fraction",
        type=float,
        default=_env_float("SPOTRUN_SPOT_FRACTION"),
        help="spot price estimated as this share of on-demand when AWS gives none (0.35)",
    )
    p.add_argument(
        "--price-refresh-seconds",
        type=float,
        default=_env_float("SPOTRUN_PRICE_REFRESH_SECONDS"),
        help="reuse spot prices fetched from AWS this long (600)",
    )


def _leader_flags(p: argparse.ArgumentParser) -> None:
    """Leader election on a coordination.k8s.io Lease, for more than one replica."""
    d = ElectionConfig()
    p.add_argument(
        "--leader-elect",
        action="store_true",
        help="act only while holding a Lease (run two replicas: the standby keeps its "
        "watches warm and takes over when the leader's lease expires or is released)",
    )
    p.add_argument(
        "--leader-election-id",
        default="spotrun-operator",
        metavar="NAME",
        help="name of the Lease (default: spotrun-operator)",
    )
    p.add_argument(
        "--leader-election-namespace",
        default=None,
        metavar="NS",
        help="namespace of the Lease (default: POD_NAMESPACE, else default)",
    )
    p.add_argument(
        "--leader-election-lease-seconds",
        type=int,
        default=d.lease_seconds,
        help=f"how long a standby waits, after the lease was last renewed, to take it over "
        f"({d.lease_seconds})",
    )
    p.add_argument(
        "--leader-election-renew-deadline-seconds",
        type=float,
        default=d.renew_deadline_seconds,
        help=f"how long the leader retries a renewal before it gives up and exits "
        f"({d.renew_deadline_seconds:g})",
    )
    p.add_argument(
        "--leader-election-retry-period-seconds",
        type=float,
        default=d.retry_period_seconds,
        help=f"time between tries to acquire or renew ({d.retry_period_seconds:g})",
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
        "--metrics-port", type=int, default=8000, help="Prometheus /metrics port (0: off)"
    )
    p.add_argument("--metrics-address", default="0.0.0.0", help="Prometheus listen address")
    _pricing_flags(p)
    p.add_argument(
        "--restart-on-rebalance",
        action="store_true",
        default=None,
        help="treat a rebalance recommendation like an interruption notice",
    )
    p.add_argument(
        "--replace-on-rebalance",
        action="store_true",
        default=None,
        help="on a rebalance recommendation, ask for a replacement node at once and move the "
        "gang to it once it holds the run's image",
    )
    p.add_argument(
        "--train-through-notice",
        action="store_true",
        default=None,
        help="on a spot interruption notice, keep training, ask for a replacement node at once "
        "and move the gang to it once it holds the run's image (or stop gracefully when only "
        "the stop margin is left); each run gets a PodDisruptionBudget that holds the drain",
    )
    p.add_argument("--workers", type=int, default=config.DEFAULT_WORKERS, help="reconcile threads")
    p.add_argument(
        "--pod-dry-run",
        action="store_true",
        help="dry-run the pods of each attempt before creating it, so a pod the apiserver "
        "would refuse fails the run as InvalidSpec at once (needs create on pods: the "
        "chart grants it with rbac.podDryRun)",
    )
    _leader_flags(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"spotrun-operator {__version__}")
    for name, typ, text in _TUNABLES:
        p.add_argument(f"--{name.replace('_', '-')}", type=typ, default=None, help=text)
    args = p.parse_args(argv)
    problem = election_config(args).problem()
    if args.leader_elect and problem:
        p.error(f"leader election: {problem}")
    return args


def election_config(args: argparse.Namespace) -> ElectionConfig:
    return ElectionConfig(
        lease_seconds=args.leader_election_lease_seconds,
        renew_deadline_seconds=args.leader_election_renew_deadline_seconds,
        retry_period_seconds=args.leader_election_retry_period_seconds,
    )


def leader_elector(args: argparse.Namespace, runner: Runner) -> leader.Elector:
    """The Lease candidate of this process. The runner waits until it leads."""
    runner.leading.clear()
    name = args.leader_election_id
    return leader.Elector(
        Leases(runner.kube),
        args.leader_election_namespace or leader.default_namespace(),
        name,
        leader.identity(),
        election_config(args),
        runner.leading,
        on_status=lambda on: runner.metrics.leading(name, on),
    )


def pricing_config(args: argparse.Namespace) -> PricingConfig:
    """Where spot prices come from and the on-demand table, from the flags."""
    fields: dict[str, Any] = {
        "region": args.aws_region,
        "endpoint_url": args.aws_endpoint_url,
        "on_demand_overrides": dict(args.on_demand_price or ()),
    }
    if args.spot_fraction is not None:
        fields["spot_fraction"] = args.spot_fraction
    if args.price_refresh_seconds is not None:
        fields["refresh_seconds"] = args.price_refresh_seconds
    return PricingConfig(**fields)


def table_prices(pricing: PricingConfig) -> PriceSource:
    """Spot prices estimated from the on-demand table (no AWS, no PricingAvailable)."""
    table = price_table(pricing.on_demand_table(), pricing.spot_fraction)

    def source(_types: Sequence[str]) -> tuple[Mapping[str, Price] | Prices, None]:
        return table, None

    return source


def aws_prices(pricing: PricingConfig | None = None) -> PriceSource:
    """Spot prices from AWS (cached for ``refresh_seconds``, fetched on a thread of their
    own so that a slow AWS never holds reconciles up), with the PricingAvailable condition
    telling runs when the figures are only estimates."""
    book = BackgroundPriceBook(PriceBook(pricing))

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
    overrides["replace_on_rebalance"] = args.replace_on_rebalance
    overrides["train_through_notice"] = args.train_through_notice
    cfg = config.with_overrides(config.from_env(), overrides)
    # The reconcile workers, the event sink and the Lease's calls (kopf's executor).
    api = connection.load_api_client(
        args.kubeconfig,
        connections=args.workers + 2,
        measured=client_metrics.ClientMetrics(registry),
    )
    pricing = pricing_config(args)
    prices = aws_prices(pricing) if args.pricing == "aws" else table_prices(pricing)
    return Runner(
        kube.Kube(api, dry_run_pods=args.pod_dry_run),
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
    registry = CollectorRegistry()
    runner = build_runner(args, registry)
    if args.metrics_port:
        metrics.serve(registry, args.metrics_port, args.metrics_address)
    kopf_registry = kopf.OperatorRegistry()
    handlers.register(kopf_registry, runner, args.namespace)
    if args.leader_elect:
        elector = leader_elector(args, runner)
        # On SIGTERM: no new reconcile, those in flight finish, then the Lease is released.
        leader.register(
            kopf_registry,
            elector,
            drain=lambda: runner.pool.shutdown(wait=True, cancel_futures=True),
        )
        log.info("leader election: lease %s as %s", elector.describe, elector.identity)
    settings = kopf.OperatorSettings()
    handlers.configure(settings)
    log.info("spotrun-operator %s starting (%s)", __version__, runner.cfg)
    kopf.run(
        registry=kopf_registry,
        settings=settings,
        # No kopf peering (priority-based pausing, not leader election): one replica, or
        # several with --leader-elect, where only the Lease holder acts.
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
