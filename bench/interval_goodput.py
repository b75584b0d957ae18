"""Goodput of fixed checkpoint intervals against Young/Daly `auto`, by simulation.

    python bench/interval_goodput.py                    # stalls from trainer_checkpoint.json
    python bench/interval_goodput.py --stall 45 --restart 240

A run needs ``--work-hours`` of training. Interruptions arrive as a Poisson process; each
one loses the work since the last committed checkpoint and costs a restart (``--restart``:
detect, reschedule, load; an interruption during a restart restarts it). Every checkpoint
stalls the loop for the measured stall. Interruptions here are the ones whose in-notice
save does not land (instance loss without notice, a save that does not fit the notice,
a crash): a spot notice answered by the trainer's SIGTERM save loses nothing, whatever
the interval.

Policies: fixed 5, 15 and 60 min; ``auto (run)``, the Young/Daly interval from the run's
own history alone (900 s until its first interruption); and ``auto (pool)``, Young/Daly
from the pool's interruption rate, known from the start (the operator's ``auto``: a pool's
rate is learnt from every run, so a new run need not be interrupted first). Young/Daly is
sqrt(2 * C * MTBF), clamped to [60 s, 3600 s].

Each cell is the mean goodput (useful time / wall time) over ``--trials`` seeded runs,
next to Daly's closed form for a fixed interval (exponential failures, failures during
restart included) as a check on the simulation. Prints tables and writes
bench/results/interval_goodput.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spotrun_operator.facts import pools

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
MIN_INTERVAL, MAX_INTERVAL, DEFAULT_INTERVAL = 60.0, 3600.0, 900.0
MTBF_HOURS = (0.5, 1.0, 2.0, 4.0, 8.0)
FIXED_MINUTES = (5, 15, 60)

# interval(seconds run so far, interruptions so far) -> seconds of training per checkpoint
Policy = Callable[[float, int], float]


def young_daly(stall: float, mtbf: float) -> float:
    return min(MAX_INTERVAL, max(MIN_INTERVAL, math.sqrt(2.0 * stall * mtbf)))


def fixed(seconds: float) -> Policy:
    return lambda _ran, _lost: seconds


def auto_run(stall: float) -> Policy:
    def interval(ran: float, lost: int) -> float:
        if lost == 0 or ran <= 0:
            return DEFAULT_INTERVAL
        return young_daly(stall, ran / lost)

    return interval


def auto_pool(stall: float, mtbf: float) -> Policy:
    return fixed(float(pools.young_daly(stall, mtbf)))  # the operator's own function


@dataclass
class Scenario:
    work: float  # seconds of training the run needs
    mtbf: float  # mean seconds between interruptions
    stall: float  # seconds one checkpoint blocks the loop
    restart: float  # seconds from an interruption to training again


def _restart(clock: float, s: Scenario, rng: random.Random) -> tuple[float, int]:
    """Clock after a restart completes, and interruptions suffered during it."""
    lost = 0
    while True:
        gap = rng.expovariate(1.0 / s.mtbf)
        if gap >= s.restart:
            return clock + s.restart, lost
        clock += gap
        lost += 1


def simulate(policy: Policy, s: Scenario, rng: random.Random) -> float:
    """Goodput of one run: work / wall time."""
    clock, done, ran, lost = 0.0, 0.0, 0.0, 0
    next_loss = rng.expovariate(1.0 / s.mtbf)
    while done < s.work:
        segment = min(policy(ran, lost), s.work - done)
        end = clock + segment + s.stall
        if end <= next_loss:
            ran += end - clock
            clock, done = end, done + segment
            continue
        ran += next_loss - clock
        lost += 1
        clock, extra = _restart(next_loss, s, rng)
        lost += extra
        next_loss = clock + rng.expovariate(1.0 / s.mtbf)
    return s.work / clock


def daly_goodput(interval: float, s: Scenario) -> float:
    """Closed form for a fixed interval: E[wall per segment] = M e^(R/M) (e^((tau+C)/M) - 1)."""
    m = s.mtbf
    wall = m * math.exp(s.restart / m) * math.expm1((interval + s.stall) / m)
    return interval / wall


def policies(s: Scenario) -> dict[str, tuple[Policy, float | None]]:
    """Name -> (policy, fixed interval for the closed form or None)."""
    out: dict[str, tuple[Policy, float | None]] = {
        f"fixed {m}m": (fixed(m * 60.0), m * 60.0) for m in FIXED_MINUTES
    }
    out["auto (run)"] = (auto_run(s.stall), None)
    pool = young_daly(s.stall, s.mtbf)
    out["auto (pool)"] = (auto_pool(s.stall, s.mtbf), pool)
    return out


def cell(
    policy: Policy, closed: float | None, s: Scenario, trials: int, seed: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    runs = [simulate(policy, s, rng) for _ in range(trials)]
    mean = sum(runs) / len(runs)
    return {
        "goodput": mean,
        "min": min(runs),
        "closed_form": daly_goodput(closed, s) if closed is not None else None,
    }


def table(stall: float, args: argparse.Namespace) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for hours in MTBF_HOURS:
        s = Scenario(args.work_hours * 3600.0, hours * 3600.0, stall, args.restart)
        row = {
            name: cell(policy, closed, s, args.trials, args.seed)
            for name, (policy, closed) in policies(s).items()
        }
        row["auto (pool)"]["interval_seconds"] = young_daly(stall, s.mtbf)
        rows[f"{hours:g}h"] = row
    return rows


def print_table(label: str, stall: float, rows: dict[str, Any]) -> None:
    names = list(next(iter(rows.values())))
    print(f"\n{label}: stall {stall:.3g} s per checkpoint; goodput % (closed form)")
    print(f"{'MTBF':>6} " + " ".join(f"{n:>17}" for n in names) + "  auto interval")
    for mtbf, row in rows.items():
        cells = []
        for n in names:
            c = row[n]
            closed = f"({100 * c['closed_form']:.1f})" if c["closed_form"] is not None else ""
            cells.append(f"{100 * c['goodput']:>9.2f} {closed:>7}")
        print(f"{mtbf:>6} " + " ".join(cells) + f"  {row['auto (pool)']['interval_seconds']:.0f} s")


def measured_stalls(path: Path) -> dict[str, float]:
    """Loop stalls per save mode from the trainer checkpoint bench."""
    data = json.loads(path.read_text())
    return {
        f"{mode} save, {data['config']['params']} on {data['device']}": data[mode]["stall_seconds"]
        for mode in ("sync", "async")
        if data.get(mode, {}).get("stall_seconds") is not None
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--stall", type=float, action="append", help="checkpoint stall, seconds")
    p.add_argument("--stalls-from", default=str(RESULTS / "trainer_checkpoint.json"))
    p.add_argument("--restart", type=float, default=180.0, help="seconds to train again")
    p.add_argument("--work-hours", type=float, default=48.0)
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "interval_goodput.json"))
    return p.parse_args()


def main() -> int:
    args = parse_args()
    stalls = (
        {f"--stall {s:g}": s for s in args.stall}
        if args.stall
        else measured_stalls(Path(args.stalls_from))
    )
    results = {}
    for label, stall in stalls.items():
        rows = table(stall, args)
        print_table(label, stall, rows)
        results[label] = {"stall_seconds": stall, "mtbf": rows}
    out = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "restart_seconds": args.restart,
        "work_hours": args.work_hours,
        "trials": args.trials,
        "seed": args.seed,
        "results": results,
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
