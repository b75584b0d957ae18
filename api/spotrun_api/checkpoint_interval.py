"""``checkpoint.interval: auto``: the Young/Daly interval, and the bounds and checkpoint
cost the operator assumes (pure).

The operator gives each attempt of an ``auto`` run this interval from the MTBF it measured;
``kubectl spotrun estimate`` gives it from an assumed interruption rate, so that both read
``auto`` the same way.
"""

from __future__ import annotations

import math
from typing import Final

MIN_AUTO_INTERVAL_SECONDS: Final = 60.0
MAX_AUTO_INTERVAL_SECONDS: Final = 3600.0
# The save stall (C) assumed until the trainer reports a measured one
# (status.progress.checkpointStallSeconds); the operator's checkpoint_cost_seconds.
DEFAULT_CHECKPOINT_COST_SECONDS: Final = 60.0


def young_daly(cost_seconds: float, mtbf_seconds: float) -> int:
    """sqrt(2 * C * M), clamped to [60 s, 3600 s]."""
    raw = math.sqrt(2.0 * max(0.0, cost_seconds) * max(0.0, mtbf_seconds))
    return int(min(MAX_AUTO_INTERVAL_SECONDS, max(MIN_AUTO_INTERVAL_SECONDS, raw)))
