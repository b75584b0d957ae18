"""Money as people read it: rounding half up and the one USD format of every view (the
status the operator writes, its budget messages and events, the kubectl plugin)."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal


def round_half_up(value: float, places: int = 2) -> float:
    """Round as people do with money (81.925 -> 81.93), not half-even on the binary value
    (``round(81.925, 2)`` is 81.92): the decimal the float prints as is what is rounded."""
    if not math.isfinite(value):
        return value
    quantum = Decimal(1).scaleb(-places)
    return float(Decimal(repr(value)).quantize(quantum, rounding=ROUND_HALF_UP))


def fmt_usd(usd: float | None) -> str:
    """``$12.40``; thousands grouped (``$1,204.00``); ``-`` when unknown. Rounded half up;
    sub-cent amounts keep four decimals so a $0.004 run is not "$0.00"."""
    if usd is None:
        return "-"
    if 0.0 < abs(usd) < 0.01:
        return f"${round_half_up(usd, 4):.4f}"
    return f"${round_half_up(usd):,.2f}"
