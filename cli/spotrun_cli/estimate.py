"""``kubectl spotrun estimate -f RUN.yaml --hours H``: the cost table of a training plan.

Reads the TrainingRun(s) of a manifest (parsed by ``spotrun_api``'s model, so a spec the
CRD would reject is rejected here with the field named), prices them with the operator's
own price source and prints what interruptions, spot and on-demand would cost. Needs no
cluster; asks AWS for spot prices with your AWS credentials (``--pricing table``: never).
The model is in :mod:`spotrun_cli.estimate_plan`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from spotrun_api.contract import API_VERSION, KIND
from spotrun_api.spec import InvalidSpec, TrainingRunSpec, parse_spec
from spotrun_cli import estimate_plan, estimate_view, spot_prices
from spotrun_cli.estimate_plan import Assumptions


class ManifestError(ValueError):
    """A manifest this command cannot estimate; the message names the file and field."""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``estimate`` subcommand on the plugin's subparsers."""
    rate = estimate_plan.DEFAULT_INTERRUPTIONS_PER_NODE_HOUR
    share = estimate_plan.DEFAULT_MONTHLY_INTERRUPTION_SHARE
    e: argparse.ArgumentParser = sub.add_parser(
        "estimate",
        help="what a TrainingRun manifest will cost: spot vs on-demand, interruptions, budget",
        description="Price a TrainingRun before it runs (no cluster needed).",
    )
    e.add_argument("-f", "--filename", required=True, help="manifest file (- for stdin)")
    e.add_argument(
        "--hours", type=float, required=True, help="uninterrupted wall-clock training time"
    )
    e.add_argument(
        "--interruptions-per-node-hour",
        type=float,
        default=None,
        metavar="R",
        help=f"spot interruption rate (default {rate:.6f}: AWS Spot Instance Advisor's "
        f"highest band, >{share * 100:.0f}%% of instances a month)",
    )
    e.add_argument(
        "--recovery-seconds",
        type=float,
        default=None,
        help="interruption -> training again (default: measured on real nodes, "
        f"{estimate_plan.MEASURED_RECOVERY_SECONDS - estimate_plan.MEASURED_GRACE_SECONDS:g} s "
        "+ the run's terminationGracePeriodSeconds)",
    )
    e.add_argument("--region", help="AWS region (default: $AWS_DEFAULT_REGION, $AWS_REGION, "
                   "else us-east-1)")  # fmt: skip
    e.add_argument(
        "--pricing",
        choices=("aws", "table"),
        default="aws",
        help="aws: spot prices from EC2 (default); table: 35%% of the on-demand table",
    )
    e.add_argument("--aws-endpoint-url", help="EC2 endpoint (a VPC endpoint, a test server)")
    e.add_argument("--json", action="store_true", help="print JSON")
    e.add_argument("-n", "--namespace", dest="sub_namespace", help=argparse.SUPPRESS)
    return e


Run = tuple[str, str | None, TrainingRunSpec]  # name, namespace, spec


def read_documents(path: str) -> list[Any]:
    """The YAML documents of a file (``-``: stdin), empty ones dropped."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except OSError as exc:
        raise ManifestError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from None


def parse_run(doc: dict[str, Any], where: str) -> Run:
    """One TrainingRun object, its spec parsed by the api's model (fields named as the CRD
    names them)."""
    raw_meta = doc.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    name = str(meta.get("name") or "")
    where = f"{where}: TrainingRun {name}".rstrip()
    if doc.get("apiVersion") != API_VERSION:
        got = doc.get("apiVersion")
        raise ManifestError(f"{where}: apiVersion: must be {API_VERSION}, got {got!r}")
    if "spec" not in doc:
        raise ManifestError(f"{where}: spec: required")
    try:
        spec = parse_spec(doc["spec"])
    except InvalidSpec as exc:
        raise ManifestError(f"{where}: {exc}") from None
    ns = meta.get("namespace")
    return name, (str(ns) if ns else None), spec


def load_runs(path: str) -> list[Run]:
    """Every TrainingRun in the manifest; ManifestError when the file is unreadable, holds
    no TrainingRun, or a spec is invalid."""
    runs: list[Run] = []
    kinds: list[str] = []
    for i, doc in enumerate(read_documents(path)):
        if not isinstance(doc, dict):
            raise ManifestError(f"{path}: document {i + 1} is not a Kubernetes object")
        kinds.append(str(doc.get("kind") or "an object without kind"))
        if doc.get("kind") == KIND:
            runs.append(parse_run(doc, f"{path}: document {i + 1}" if i else path))
    if not runs:
        found = ", ".join(dict.fromkeys(kinds)) or "nothing"
        raise ManifestError(f"{path}: no {KIND} ({API_VERSION}) in it (found: {found})")
    return runs


def assumptions(args: argparse.Namespace) -> Assumptions:
    rate = args.interruptions_per_node_hour
    if rate is None:
        rate = estimate_plan.DEFAULT_INTERRUPTIONS_PER_NODE_HOUR
    return Assumptions(args.hours, rate, args.recovery_seconds)


def rate_note(args: argparse.Namespace) -> str:
    if args.interruptions_per_node_hour is not None:
        return "--interruptions-per-node-hour"
    share = estimate_plan.DEFAULT_MONTHLY_INTERRUPTION_SHARE
    return f"default: AWS Spot Instance Advisor's >{share:.0%}/month band"


def run(args: argparse.Namespace) -> int:
    """The subcommand: 0 printed, 1 a bad manifest or option (the message says which)."""
    try:
        a = assumptions(args)
        runs = load_runs(args.filename)
    except (ManifestError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    types = [t for _, _, spec in runs for t in spec.capacity.instance_types]
    prices = spot_prices.lookup(
        types,
        region=spot_prices.resolve_region(args.region),
        pricing=args.pricing,
        endpoint_url=args.aws_endpoint_url,
    )
    estimates = [
        estimate_plan.estimate(spec, a, prices.quotes, prices.on_demand, name=n, namespace=ns)
        for n, ns, spec in runs
    ]
    if args.json:
        obj = estimate_view.to_json(
            estimates, region=prices.region, prices_note=prices.note, pricing_source=prices.source
        )
        json.dump(obj, sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(
            estimate_view.render(estimates, prices_note=prices.note, rate_note=rate_note(args))
        )
    return 0
