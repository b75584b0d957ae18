"""Expected goodput of an 8-node gang from the measured recoveries (``real_recovery``).

Goodput = useful training time / paid node time. An 8-node gang whose nodes are each
interrupted once per ``hours`` (4 h, 1 h) is interrupted every ``hours / 8`` (its MTBF M).
The checkpoint interval is ``checkpoint.interval: auto``: Young/Daly from the save stall C
and M (the operator's own ``pools.young_daly``); the stall is the trainer checkpoint bench's
measured one (bench/results/trainer_checkpoint.json, synchronous save). Per signal, with
its measured recovery R (signal -> training again) and lost steps:

- a signal whose stop saved in time (0 lost steps: nth and shutdown answered inside their
  notice) costs R only: goodput = tau / (tau + C) * M / (M + R);
- a signal that lost work (loss, partition, or any case with lost steps) loses the
  partial segment too: Daly's closed form, goodput = tau / (M e^(R/M) (e^((tau+C)/M) - 1)).

A warm spare's own node time is paid as well: with a spare the gang pays for 9 nodes and
trains on 8, so its goodput is scaled by 8/9. An elastic run (``spotrun_elastic``) trains
on the 7 survivors from R on, until the whole gang trains again at F (``full_s``) after a
grow-back pause P (``pause_s``): it stands still for R + P, and between them trains at
7/8 of the speed, so its recovery counts as R + P + (F - R - P) / 8 (the survivors' and
the placeholder's node time paid in full); the grow-back's own stop saves in time. A run
that trains through the notice (``spotrun_ride``) and the ``rebalance`` signal count their
pause as R: the gang trained until it; the replacement's node time between its join and
the move (seconds with a pre-baked image) is not counted. The
same figures are printed for the Kubeflow peer (same trainer, same interval, its measured
R and lost steps).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from spotrun_operator.facts import pools

RESULTS = Path(__file__).resolve().parent / "results"
GANG = 8
RATES_HOURS = (4.0, 1.0)
VARIANTS = ("spotrun", "spotrun_spare", "spotrun_elastic", "spotrun_ride", "kubeflow")


def save_stall(path: Path = RESULTS / "trainer_checkpoint.json") -> float:
    return float(json.loads(path.read_text())["sync"]["stall_seconds"])


def goodput(recovery: float, lost_work: bool, stall: float, mtbf: float) -> float:
    tau = float(pools.young_daly(stall, mtbf))
    if not lost_work:
        return tau / (tau + stall) * mtbf / (mtbf + recovery)
    wall = mtbf * math.exp(recovery / mtbf) * math.expm1((tau + stall) / mtbf)
    return tau / wall


def recovery(row: dict[str, Any], variant: str) -> float | None:
    """Seconds an interruption costs ``variant`` (an elastic run's: see the module)."""
    seconds = row.get(f"{variant}_s")
    grown = row.get(f"{variant}_grow_back")
    if seconds is None or variant != "spotrun_elastic":
        return None if seconds is None else float(seconds)
    if not grown:
        return None
    still = float(seconds) + float(grown["pause_s"])
    return still + max(0.0, float(grown["full_s"]) - still) / GANG


def table(data: dict[str, Any], stall: float | None = None) -> dict[str, Any]:
    """{rate: {signal: {variant: goodput}}} from ``real_recovery``'s summary."""
    stall = save_stall() if stall is None else stall
    out: dict[str, Any] = {"save_stall_s": stall, "gang_nodes": GANG, "rates": {}}
    for hours in RATES_HOURS:
        mtbf = hours * 3600.0 / GANG
        rows: dict[str, dict[str, float | None]] = {}
        for sig, row in data["signals"].items():
            cells: dict[str, float | None] = {}
            for v in VARIANTS:
                seconds = recovery(row, v)
                if seconds is None:
                    cells[v] = None
                    continue
                lost = (row.get(f"{v}_lost_steps") or 0) > 0 or sig in ("loss", "partition")
                g = goodput(float(seconds), lost, stall, mtbf)
                cells[v] = round(g * (GANG / (GANG + 1) if v == "spotrun_spare" else 1.0), 4)
            rows[sig] = cells
        out["rates"][f"1 per node per {hours:g} h"] = rows
    return out


def print_table(g: dict[str, Any]) -> None:
    print(f"\nexpected goodput, {g['gang_nodes']}-node gang, interval auto, "
          f"save stall {g['save_stall_s']:.2f}s")  # fmt: skip
    for rate, rows in g["rates"].items():
        print(f"  {rate}")
        for sig, cells in rows.items():
            text = "  ".join(
                f"{v} {'-' if c is None else format(100 * c, '.2f') + '%'}"
                for v, c in cells.items()
            )
            print(f"    {sig:<10} {text}")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"
