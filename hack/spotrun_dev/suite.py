"""``make test``: every test, in lanes that share the machine without sharing anything else.

On 2 cores the suite is three parts of about the same weight: the tests on the kwok fleet
(the chart, the CLI, the controller, cost, Kueue; they mostly wait on the control plane,
about 0.6 of a core), the trainer processes and the unit tests (CPU-bound, no cluster),
and the tests on the real nodes (CPU-bound: real trainers in real containers). The first
two run at once, each its own pytest session; the real nodes run alone after both, so no
trainer in a container competes with a trainer on the host and the two sessions touch no
common object (the kwok tests install and uninstall the chart's cluster-wide objects; the
real-node tests use them).

The kwok lane's output streams; the other lane's is kept in a file and printed when it
ends. The exit status is the first non-zero one of the three sessions (pytest's: 1 a test
failed, 5 nothing was collected, ...), every lane runs regardless.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from spotrun_dev import paths

E2E = "tests/e2e"
REAL_NODES = f"{E2E}/realnodes"
KWOK_LANE = (E2E, f"--ignore={REAL_NODES}")
PROCESS_LANE = ("tests/integration", "tests/unit")
REAL_LANE = (REAL_NODES,)
DURATIONS = "--durations=20"


def pytest_command(lane: Sequence[str], extra: Sequence[str]) -> list[str]:
    """One lane's pytest session (``extra``: the caller's arguments, e.g. ``-x``)."""
    return [sys.executable, "-m", "pytest", *lane, DURATIONS, *extra]


def run_lanes(extra: Sequence[str]) -> int:
    root = paths.REPO_ROOT
    with tempfile.TemporaryDirectory(prefix="spotrun-test-lanes-") as tmp:
        log_path = Path(tmp) / "processes.log"
        with log_path.open("wb") as log:
            # No cache plugin in the background session: both would write .pytest_cache.
            background = subprocess.Popen(
                pytest_command(PROCESS_LANE, [*extra, "-p", "no:cacheprovider"]),
                cwd=root, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                kwok_rc = subprocess.call(pytest_command(KWOK_LANE, extra), cwd=root)
                process_rc = background.wait()
            finally:
                if background.poll() is None:  # interrupted: stop the lane we started
                    background.terminate()
                    background.wait()
        print(f"\n===== {' '.join(PROCESS_LANE)} (ran beside {KWOK_LANE[0]}) =====", flush=True)
        sys.stdout.write(log_path.read_text(errors="replace"))
    print(f"\n===== {REAL_NODES} (alone) =====", flush=True)
    real_rc = subprocess.call(pytest_command(REAL_LANE, extra), cwd=root)
    codes = {"kwok": kwok_rc, "processes": process_rc, "real nodes": real_rc}
    print("lanes: " + ", ".join(f"{k} exit {v}" for k, v in codes.items()), flush=True)
    return next((c for c in codes.values() if c != 0), 0)


def main(argv: Sequence[str] | None = None) -> int:
    return run_lanes(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    raise SystemExit(main())
