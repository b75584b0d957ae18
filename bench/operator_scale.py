"""Scale benchmark: 1,000 one-node and 100 four-node TrainingRuns on 1,500 fake spot nodes,
300 interruptions within 60 s across zones with mixed signals, ASG-like replacement.

On the local cluster (kwok nodes: pods do not execute), in one run:

1. cold start: every TrainingRun is created with the operator stopped, then the operator
   starts: time from its start to its first decision (first status write or job), and to
   every first attempt Running;
2. the storm: ``--interruptions`` runs lose one node each, paced over ``--spread-seconds``,
   signals in turn (NTH spot ITN, Karpenter, ASG lifecycle, instance loss, graceful
   shutdown) through ``spotrun_dev.inject``; the ASG replaces each reclaimed instance with
   a new node in its zone. Each recovery is cut into phases (``recovery_phases``):
   p50/p99 per phase per signal, signal → next attempt created, → all pods Running;
3. the operator's peak RSS and CPU seconds, and its API requests per recovery (reads and
   writes, from the apiserver's audit log, by user agent); inside the operator, from its
   own /metrics over each storm (``operator_metrics``): how long woken runs waited for a
   reconcile thread, how long reconciles and each verb's requests took;
4. peer (a): the Kubeflow training operator alone, PyTorchJobs with
   ``restartPolicy: OnFailure`` / ``ExitCode`` whose node is interrupted the same way:
   signal → replacement pod created → Running (what users get without spotrun);
5. peer (b): a bare ``kubectl create`` loop of as many PyTorchJobs as there were
   recoveries, sized like them: the API floor for the recovery throughput.

The benchmark's nodes are ``bench-p4d-*``, labelled and tainted ``spotrun.dev/bench=
operator-scale`` and its pods select and tolerate that only: it never touches the default
fleet nor another test's pods. Everything it made is deleted at the end, on failure too.

Prints tables, writes bench/results/operator_scale.json. Not a test: it asserts nothing.
Usage: ``python bench/operator_scale.py [--runs 1000 --big-runs 100 --nodes 1500
--interruptions 300 --spread-seconds 60]``; small: ``--runs 50 --big-runs 5 --nodes 80
--interruptions 20``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from process_stats import machine
from scale_objects import BURST_SIGNALS, SIGNALS, ZONES
from scale_peers import create_peer_jobs, peers_step
from scale_report import print_report, targets, throughput_ratio
from scale_storm import Bench, interruption_step

from spotrun_dev import paths
from spotrun_operator.facts.config import DEFAULT_WORKERS

RESULTS = paths.REPO_ROOT / "bench" / "results" / "operator_scale.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000, help="TrainingRuns of --run-size nodes")
    ap.add_argument("--run-size", type=int, default=1)
    ap.add_argument("--big-runs", type=int, default=100, help="TrainingRuns of --big-size")
    ap.add_argument("--big-size", type=int, default=4)
    ap.add_argument("--nodes", type=int, default=1500, help="fake spot nodes")
    ap.add_argument("--interruptions", type=int, default=300)
    ap.add_argument("--spread-seconds", type=float, default=60.0)
    ap.add_argument("--burst", type=int, default=100, help="runs interrupted all at once")
    ap.add_argument("--peer-jobs", type=int, default=50, help="peer (a): Kubeflow-only jobs")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument(
        "--signals",
        type=lambda v: tuple(x for x in v.split(",") if x),
        default=SIGNALS,
        help=f"the storm's signals, comma-separated (default {','.join(SIGNALS)})",
    )
    ap.add_argument("--resync-seconds", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=None, help="operator reconcile threads")
    ap.add_argument("--timeout", type=float, default=600.0, help="per waiting step, seconds")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=RESULTS)
    return ap.parse_args(argv)


def _terminated(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # SIGTERM too runs the cleanup in ``main``'s finally


def run_header(args: argparse.Namespace) -> dict[str, Any]:
    """What the result says of the run before it measures: sizes, machine, flags, time."""
    return {
        "sizes": {
            "runs": args.runs,
            "run_size": args.run_size,
            "big_runs": args.big_runs,
            "big_size": args.big_size,
            "nodes": args.nodes,
            "interruptions": args.interruptions,
            "spread_seconds": args.spread_seconds,
            "burst": args.burst,
            "peer_jobs": 0 if args.no_peers else args.peer_jobs,
            "signals": list(args.signals),
            "burst_signals": list(BURST_SIGNALS),
            "zones": list(ZONES),
        },
        "machine": machine(),
        "operator_flags": {
            "backoff_base_seconds": 1,
            "backoff_jitter": 0,
            "failure_settle_seconds": 1,
            "resync_seconds": args.resync_seconds,
            "workers": args.workers if args.workers is not None else f"default ({DEFAULT_WORKERS})",
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def measure(bench: Bench, args: argparse.Namespace, res: dict[str, Any]) -> None:
    """Every step of the benchmark, its figures into ``res`` as each step ends."""
    bench.setup()
    bench.start_watches()
    runs = bench.create_runs()
    peers = [] if args.no_peers else create_peer_jobs(bench)
    res["cold_start"] = bench.cold_start(runs)
    res["storm"] = interruption_step(
        bench, runs, args.interruptions, args.signals, "storm", args.spread_seconds
    )
    if args.burst:
        res["burst"] = interruption_step(bench, runs, args.burst, BURST_SIGNALS, "burst", 0)
    bench.stop_operator()
    res["resources"] = bench.sampler.report()
    basis = "burst" if args.burst else "storm"
    if not args.no_peers:
        sizes = [r.size for r in bench.obs.recs.values() if r.group == basis]
        res.update(peers_step(bench, peers, sizes))
        res["throughput_ratio"] = throughput_ratio(
            basis, res[basis]["throughput"], res["peer_create_loop"]
        )
    res["resources"] = bench.sampler.report()
    res["interrupt_failures"] = bench.failures
    res["targets"] = targets(res)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    bench = Bench(args)
    res = run_header(args)
    try:
        measure(bench, args, res)
    except (KeyboardInterrupt, SystemExit):
        bench.notes.append("interrupted (Ctrl-C or SIGTERM)")
        raise
    finally:
        res["notes"] = bench.notes
        with bench.obs.lock:  # also when interrupted: why a too-large run went wrong
            res["unprovoked_outcomes"] = dict(Counter(bench.obs.unprovoked.values()))
        try:
            bench.teardown()
        finally:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(res, indent=2) + "\n")
    print_report(res)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
