"""What a rank reads from its pod's env and writes for the kubelet, without torch (the
launcher, PID 1 of a pod, uses it before torchrun starts): a number of seconds from an
environment variable, and the container's termination message the operator reads."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

from spotrun_api import contract

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 1000  # characters; the kubelet keeps 4096 bytes of a termination message


def seconds_from_env(env: Mapping[str, str], name: str, default: float, allow_zero: bool) -> float:
    """A number of seconds from ``env[name]`` (``default`` when unset); a bad value fails
    at start-up with the variable named."""
    raw = env.get(name, "").strip()
    if not raw:
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: not a number of seconds") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}={raw!r}: must be {'>= 0' if allow_zero else '> 0'} seconds")
    return value


def write_termination_message(text: str, env: Mapping[str, str] = os.environ) -> Path | None:
    """Write ``text`` where the kubelet reads the container's termination message. Outside
    a pod the default path does not exist and is never created (it is under /dev)."""
    named = env.get(contract.ENV_TERMINATION_MESSAGE_PATH)
    path = Path(named or contract.DEFAULT_TERMINATION_MESSAGE_PATH)
    if not named and not path.exists():
        return None
    try:
        path.write_text(text[:MESSAGE_LIMIT] + "\n")
    except OSError as e:
        log.warning("could not write the termination message to %s: %s", path, e)
        return None
    return path
