"""Recovery on the real nodes with production's costs: spotrun against Kubeflow's restart.

    python bench/real_recovery.py                       # every signal and variant, once
    python bench/real_recovery.py --signals nth,loss --reps 3 --delay 90

One 2-node run of the real trainer image (DDP over gloo, ``python -m spotrun_lm``) per case,
on the real nodes, is interrupted once by ``nth`` (NTH's drain, then the instance dies),
``shutdown`` (the kubelet's graceful node shutdown, then power-off), ``loss`` (every
process of the instance SIGKILLed) or ``partition`` (the node's network cut, its processes
alive; terminated once the case is over), or ``rebalance`` (NTH's IMDS handling of a
rebalance recommendation on the node, taint and cordon, then ``--rebalance-lead`` seconds
later the ``nth`` notice there; the bench's operator runs with ``--replace-on-rebalance``),
or ``karpenter`` (no NTH: Karpenter v1's interruption handling, the Node deleted behind its
finalizer, the disrupted taint, the drain, then the instance ended).
The spot group replaces a lost instance, and
launches a node for each of the bench's pods the scheduler cannot place (Cluster
Autoscaler's scale-up: a run's placeholder, Kubeflow's recreated pod), each after
``--delay`` seconds, and replacements start without images: the kubelet pulls the trainer
image from the harness registry (``provisioner``; ``--images preloaded`` for a pre-baked
AMI). Variants:

- ``spotrun``: a TrainingRun, two spot nodes in the group (no spare capacity);
- ``spotrun_spare``: the same with ``warmSpares: 1`` and a third node for the spare;
- ``spotrun_elastic``: the same two nodes with ``elasticity: {minNodes: 1,
  waitBeforeShrink: 0s}``: the survivor trains alone at once, and the whole gang trains
  again once a placeholder ran on the replacement (``grow_back``: signal -> whole gang
  training, ``full_s``, and the pause of the grow-back itself, ``pause_s``);
- ``spotrun_ride`` (``nth`` and ``karpenter`` only): ``spotrun`` with the operator
  training through the notice (the chart's ``operator.spotNotice: trainThrough``): the
  run's budget holds NTH's (or Karpenter's) drain, the gang trains on while its
  replacement comes and moves to it once it is warm; its figure is the pause (as for
  ``rebalance``), and its notes give signal -> training;
- ``kubeflow``: the same PyTorchJob spotrun would create for attempt 1, run by the
  Kubeflow training operator alone, ``restartPolicy: OnFailure`` on both replicas (a
  failed container restarts in place, a deleted pod is recreated), two nodes; the
  trainer's own heartbeat is off (``SPOTRUN_PEER_TIMEOUT_SECONDS=0``: not Kubeflow's).

Per case: signal -> the first training step of the next gang (``rebalance`` and
``spotrun_ride``: the pause, the old gang's last step -> the next gang's first, since the
run trains on after the signal),
its phases
(``real_recovery_watch``), the steps lost (the master's own log lines) and where the
machine's CPU went from the next gang bound to its first step (``real_recovery_cpu``). Writes
bench/results/real_recovery.json (medians over ``--reps``) and prints the table, then the
expected goodput of an 8-node gang (``real_recovery_goodput``). Not a test: it needs the
cluster (``make cluster-up``) and about 40 minutes for every case once; it uninstalls its
operator when it ends (left running, it would act on the cluster's later runs beside theirs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import real_recovery_goodput as goodput
import real_recovery_watch as w
from real_recovery_run import CaseRunner

from spotrun_dev import cluster
from spotrun_dev.provisioner import IMAGE_MODES, CapacitySettings

RESULTS = Path(__file__).resolve().parent / "results"
SIGNALS = ("nth", "shutdown", "loss", "partition", "rebalance", "karpenter")
VARIANTS = goodput.VARIANTS
# spotrun_ride trains through a spot notice: only a signal with a notice has it to ride.
RIDE_SIGNALS = ("nth", "karpenter")
# What the spot group does (provisioner): runs measured before it launched for pending pods,
# or before a replacement's boot was part of its delay, are not merged with these.
GROUP = "replaces terminated instances, launches for unschedulable pods, boots within the delay"


@dataclass
class Result:
    signal: str
    variant: str
    seconds: float | None
    lost_steps: int | None
    phases: dict[str, float]
    notes: list[str]
    trainer_phases: dict[str, float] = field(default_factory=dict)
    grow_back: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # real_recovery_cpu.account


def summary(results: list[Result], settings: CapacitySettings) -> dict[str, Any]:
    """The shape the issue asks for: per signal, medians per variant and spotrun's phases."""
    out: dict[str, Any] = {
        "provisioning_delay_s": settings.delay_seconds,
        "images": settings.images,
        "group": GROUP,
        "signals": {},
    }
    for sig in sorted({r.signal for r in results}, key=SIGNALS.index):
        of = [r for r in results if r.signal == sig]
        row: dict[str, Any] = {}
        for variant in VARIANTS:
            mine = [r for r in of if r.variant == variant]
            if mine:
                row[f"{variant}_s"] = w.median(r.seconds for r in mine)
                row[f"{variant}_phases"] = w.median_phases(r.phases for r in mine)
                row[f"{variant}_lost_steps"] = w.median(r.lost_steps for r in mine)
                cpu = [r.cpu for r in mine if r.cpu]
                if cpu:
                    row[f"{variant}_cpu"] = {k: w.median(c.get(k) for c in cpu) for k in cpu[0]}
                grown = [r.grow_back for r in mine if r.grow_back]
                if grown:
                    row[f"{variant}_grow_back"] = {
                        k: w.median(g.get(k) for g in grown) for k in grown[0]
                    }
        row["lost_steps"] = row.get("spotrun_lost_steps")
        row["phases"] = row.get("spotrun_phases", {})
        row["runs"] = [vars(r) for r in of]
        out["signals"][sig] = row
    return out


def print_table(data: dict[str, Any]) -> None:
    print(f"\nprovisioning delay {data['provisioning_delay_s']:g}s, images {data['images']}, "
          f"the group {data.get('group', 'replaces terminated instances')}")  # fmt: skip
    head = f"{'signal':<10}" + "".join(f"{v:>17}" for v in VARIANTS) + "   lost   phases (spotrun)"
    print(head)
    for sig, row in data["signals"].items():
        cells = "".join(
            f"{'-' if row.get(f'{v}_s') is None else format(row[f'{v}_s'], '.1f'):>17}"
            for v in VARIANTS
        )
        phases = " ".join(f"{k}={v:g}" for k, v in row["phases"].items())
        print(f"{sig:<10}{cells}   {row['lost_steps']!s:>4}   {phases}")
        for v in VARIANTS:
            if cpu := row.get(f"{v}_cpu"):
                print(f"{'':<10}{v} cpu s, bound -> trained: " + " ".join(
                    f"{k.removesuffix('_s')}={x:g}" for k, x in cpu.items()))  # fmt: skip
        grown = row.get("spotrun_elastic_grow_back")
        if grown:
            print(f"{'':<10}spotrun_elastic grows back: " + " ".join(
                f"{k}={v:g}" for k, v in grown.items()))  # fmt: skip


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--signals", default=",".join(SIGNALS))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--delay", type=float, default=None, help="provisioning delay, seconds")
    p.add_argument("--images", choices=IMAGE_MODES, default="registry")
    p.add_argument("--timeout", type=float, default=480, help="per case, signal -> training")
    p.add_argument(
        "--rebalance-lead",
        type=float,
        default=120,
        help="rebalance: seconds from the recommendation to the notice",
    )
    p.add_argument("--out", default=str(RESULTS / "real_recovery.json"))
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the runs of --out for the cases not run again (same settings)",
    )
    p.add_argument(
        "--more",
        action="store_true",
        help="with --merge: the runs of a case run again add to its runs in --out (more "
        "repetitions) instead of replacing them",
    )
    return p.parse_args()  # fmt: skip


def kept_runs(out: Path, settings: CapacitySettings, rerun: set[tuple[str, str]],
              lead: float = 120.0) -> list[Result]:  # fmt: skip
    """The runs recorded in ``out`` under the same settings (and, for rebalance runs, the
    same lead) whose (signal, variant) is not run again: a case measured again replaces
    its old runs, the others stay."""
    if not out.is_file():
        return []
    data = json.loads(out.read_text())
    same = (data.get("provisioning_delay_s"), data.get("images"), data.get("group")) == (
        settings.delay_seconds, settings.images, GROUP)  # fmt: skip
    if not same:
        raise SystemExit(f"--merge: {out} was measured with other settings")
    kept = [Result(**run) for row in data["signals"].values() for run in row["runs"]
            if (run["signal"], run["variant"]) not in rerun]  # fmt: skip
    if any(r.signal == "rebalance" for r in kept) and data.get("rebalance_lead_s") != lead:
        raise SystemExit(f"--merge: {out}'s rebalance runs had another --rebalance-lead")
    return kept


def main() -> int:
    args = parse_args()
    base = CapacitySettings.from_env()
    settings = CapacitySettings(base.delay_seconds if args.delay is None else args.delay,
                                args.images)  # fmt: skip
    signals = [s for s in args.signals.split(",") if s]
    variants = [v for v in args.variants.split(",") if v]
    for name in (*signals, *variants):
        if name not in (*SIGNALS, *VARIANTS):
            raise SystemExit(f"unknown signal or variant {name!r}")
    if args.more and not args.merge:
        raise SystemExit("--more: only with --merge")
    local = cluster.ensure_cluster()
    # The cases run again, whose old runs --merge drops (--more keeps them).
    replaced = set() if args.more else {(sig, v) for sig in signals for v in variants}
    results = []
    if args.merge:
        results = kept_runs(Path(args.out), settings, replaced, args.rebalance_lead)
    data: dict[str, Any] = {}
    with local.api_client() as api:
        runner = CaseRunner(api, settings, args.timeout, args.rebalance_lead)
        runner.setup()
        try:
            for rep, sig, variant in itertools.product(range(args.reps), signals, variants):
                if variant == "spotrun_ride" and sig not in RIDE_SIGNALS:
                    continue  # no notice to train through
                print(f"[{rep + 1}/{args.reps}] {sig} / {variant} ...", flush=True)
                b, lost = runner.run(sig, variant)
                r = Result(sig, variant, b.total(), lost, b.phases(), b.notes,
                           b.trainer_phases, b.grow_back, b.cpu)  # fmt: skip
                print(f"    {r.seconds}s, lost {lost}, {r.phases} {r.grow_back} {r.notes}",
                      flush=True)  # fmt: skip
                print(f"    cpu, bound -> trained: {r.cpu}", flush=True)
                results.append(r)
                # Each case is kept as it ends.
                data = write(results, settings, Path(args.out), args.rebalance_lead)
        finally:
            runner.teardown()
    print_table(data)
    goodput.print_table(data["goodput"])
    print(f"wrote {args.out}")
    return 0


def write(
    results: list[Result], settings: CapacitySettings, out: Path, lead: float
) -> dict[str, Any]:
    data = summary(results, settings)
    if "rebalance" in data["signals"]:
        data["rebalance_lead_s"] = lead
    data["goodput"] = goodput.table(data)
    data["machine"] = {"cpus": 2, "python": platform.python_version(), "host": "this machine"}
    data["time"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    out.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return data


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"bench took {time.monotonic() - started:.0f}s")
    sys.exit(code)
