"""Go-style durations (``90s``, ``15m``, ``1h30m``), the grammar the CRD validates."""

from __future__ import annotations

import re
from typing import Final

DURATION_PATTERN: Final = r"^([0-9]+(ms|s|m|h))+$"
_DURATION_RE: Final = re.compile(r"([0-9]+)(ms|s|m|h)")
_DURATION_FULL_RE: Final = re.compile(DURATION_PATTERN)
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(s: str) -> float:
    """Seconds in a Go-style duration (``90s``, ``15m``, ``1h30m``); ValueError otherwise.

    The CRD validates the same grammar, so a ValueError here means a spec that bypassed
    the apiserver's validation (unit tests, an older CRD)."""
    if not _DURATION_FULL_RE.match(s):
        raise ValueError(f"not a duration: {s!r} (expected e.g. 90s, 15m, 1h30m)")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_RE.findall(s))
