"""Ending a trainer process once its exit code is decided, without interpreter finalization.

When a rank stops, every checkpoint is committed (fsynced, its marker written) and its
exit code decided before its entry point returns. What Python then does on its way out,
tearing down every module of torch and transformers and collecting their objects, is
seconds of CPU in which the pod is still not terminal, and the next attempt's gang waits
for exactly that (docs/operator.md, "Fenced restarts"). Measured on the 2-core machine of
the local cluster (``python -m spotrun_lm``, one process, SIGTERM after 40 steps):
SIGTERM to exit 2.2 s with finalization, 0.26 s without it, the checkpoint committed 0.1 s
after the signal in both.

:func:`exit_process` keeps what finalization does that anyone can rely on: it ends the
process's non-daemon threads as finalization does (``threading._shutdown``), runs the
``atexit`` handlers (logging's flush and close, multiprocessing's reaping of its children, every
``weakref.finalize``) and flushes stdout and stderr, then ends with ``os._exit``. It
skips the module teardown and the last garbage collections, so the ``__del__`` of an
object still alive does not run: the trainer closes every file it writes before its entry
point returns, and what is left only frees memory. This module imports nothing heavy.

A script on the library ends the same way with ``run_main(main)`` as its last line: a
``SystemExit`` out of ``main`` (``SpotrunLoop``'s 143 on a stop, 87 when fenced) has
unwound the script's own ``finally`` blocks and ``with`` statements by then.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn


def exit_process(code: int, *, orderly: bool = True) -> NoReturn:
    """End the process with ``code``: after its non-daemon threads and its ``atexit``
    handlers, or, with ``orderly=False`` (a thread known to be blocked for good, such as a
    process group teardown left behind, which an atexit handler might wait on too), after
    only logging's flush."""
    try:
        if orderly:
            # What finalization runs first, in its order: threading's own exit hooks (an
            # idle ThreadPoolExecutor's workers are told to end there, or joining them
            # would wait forever), then every non-daemon thread joined; then the atexit
            # handlers, last registered first (one that raises is printed, the next runs).
            threading._shutdown()  # type: ignore[attr-defined]
            atexit._run_exitfuncs()
        else:
            logging.shutdown()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing to save
                stream.flush()
        os._exit(code)


def run_main(main: Callable[[], object]) -> NoReturn:
    """Run a script's ``main`` and end the process as it ended (0 when it returned, the
    code of its ``SystemExit`` otherwise) through :func:`exit_process`. Any other exception
    propagates: a traceback and exit 1, as Python ends an uncaught error."""
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = _exit_code(stop.code)
    exit_process(code)


def _exit_code(value: object) -> int:
    """The status ``sys.exit(value)`` gives: None is 0, an int itself, anything else is
    printed to stderr and is 1."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    print(value, file=sys.stderr)
    return 1
