"""``kubectl spotrun``: the kubectl plugin (``kubectl-spotrun`` on PATH).

  kubectl spotrun describe RUN [-n NS]          the run and its attempt ledger
  kubectl spotrun logs RUN [-f] [-r K] [-n NS]  the live attempt's log, -f across attempts
  kubectl spotrun estimate -f RUN.yaml --hours H  what the run will cost (no cluster needed)

kubectl hands plugins their arguments and environment unchanged, so the kubeconfig comes
from $KUBECONFIG (or --kubeconfig/--context given after the plugin name).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kubernetes.client.rest import ApiException
from kubernetes.config import ConfigException

from spotrun_cli import estimate, kubeapi, ledger


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubectl spotrun", description="Inspect spotrun TrainingRuns and estimate their cost."
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG)")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")
    p.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("describe", help="the run and its attempt ledger")
    d.add_argument("run", help="TrainingRun name")
    lg = sub.add_parser("logs", help="the live attempt's log; -f follows across attempts")
    lg.add_argument("run", help="TrainingRun name")
    lg.add_argument("-f", "--follow", action="store_true", help="follow across attempts")
    lg.add_argument(
        "-r",
        "--replica",
        type=int,
        default=0,
        help="node: 0 is the master (default), k>0 worker k-1",
    )
    for sp in (d, lg):
        sp.add_argument("-n", "--namespace", dest="sub_namespace", help=argparse.SUPPRESS)
    estimate.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "estimate":  # a manifest and prices: no kubeconfig, no cluster
        return estimate.run(args)
    namespace = (
        args.sub_namespace
        or args.namespace
        or kubeapi.default_namespace(args.kubeconfig, args.context)
    )
    try:
        runs = kubeapi.RunAPI(kubeapi.api_client(args.kubeconfig, args.context))
        run = runs.get(namespace, args.run)
        if run is None:
            print(f'Error: trainingrun "{args.run}" not found in {namespace}', file=sys.stderr)
            return 1
        if args.command == "describe":
            sys.stdout.write(ledger.describe(run))
            return 0
        return logs(runs, namespace, args.run, args.replica, args.follow)
    except ApiException as exc:
        print(f"Error from server ({exc.reason}): {kubeapi.api_message(exc)}", file=sys.stderr)
        return 1
    except ConfigException as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def logs(runs: kubeapi.RunAPI, namespace: str, run: str, replica: int, follow: bool) -> int:
    """Print the log; 1 when no log could be read at all (without -f)."""
    failed: list[str] = []

    def note(msg: str) -> None:
        print(f"kubectl-spotrun: {msg}", file=sys.stderr, flush=True)
        failed.append(msg)

    printed = False
    for line in kubeapi.follow_logs(runs, namespace, run, replica, follow, note=note):
        sys.stdout.write(line)
        sys.stdout.flush()
        printed = True
    return 1 if failed and not printed and not follow else 0


if __name__ == "__main__":
    sys.exit(main())
