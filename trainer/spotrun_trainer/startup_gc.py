"""A restarted rank imports torch and its model library without the cyclic garbage collector.

A new attempt's rank spends most of the seconds before its first step importing: torch,
transformers (which pulls in torch._dynamo and DTensor), DCP. Those imports allocate
hundreds of thousands of long-lived objects (modules, classes, functions), and CPython's
collector keeps walking them as they pile up, although none of them is garbage. With the
collector off, a resume of the built-in trainer reached its first step about 1 s sooner
(4.52 s -> 3.53 s with one rank on this project's 2-core machine: docs/trainer.md,
"Restart phases", ``bench/restart_phases.py``).

So the built-in trainer's entry point calls :func:`pause` first, and :func:`resume` once
the model is built (every import done, before the checkpoint is loaded): it moves what
start-up allocated into the permanent generation (``gc.freeze``), where later collections
never walk it, and turns the collector back on. The checkpoint load and the training steps
run with it on, so a reference cycle there (a caught exception's traceback holding a
tensor) is still collected. What start-up leaves as cyclic garbage before :func:`resume`
is kept for the life of the process: import-time leftovers, small and bounded.

Only a process that is spotrun's own calls these (``python -m spotrun_lm``); a library
object never switches the collector of a user's process. A collector that was already off
at :func:`pause` stays off.
"""

from __future__ import annotations

import gc
import threading

_lock = threading.Lock()
_paused = False  # this module turned the collector off and has not turned it back on


def pause() -> None:
    """Turn the collector off for start-up (nothing if it is already off)."""
    global _paused
    with _lock:
        if gc.isenabled():
            gc.disable()
            _paused = True


def resume() -> None:
    """Start-up is over: freeze what it allocated and turn the collector back on, if
    :func:`pause` turned it off (idempotent)."""
    global _paused
    with _lock:
        if not _paused:
            return
        _paused = False
        gc.freeze()
        gc.enable()


def paused() -> bool:
    """Whether :func:`pause` turned the collector off and :func:`resume` has not run."""
    return _paused
