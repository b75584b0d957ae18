"""``python -m spotrun_trainer.launch [--nproc-per-node N] SCRIPT [ARGS...]``: a training
script of your own, one rank per GPU, as the process a pod starts.

A pod of a TrainingRun with ``procsPerNode`` > 1 needs a process that starts the node's
ranks; torchrun does, but as PID 1 it exits 1 when SIGTERMed whatever its workers did, so
a preemption would read as an application failure. This starts them through torchrun as
the built-in trainer's launcher mode does (launcher.py): SIGTERM forwarded, torchrun's
shutdown timeout set to the grace period, and the pod's exit code derived from what the
ranks recorded (the integrations record their stops: 143, or 86 for a lost peer). With one
rank the script simply replaces this process.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from spotrun_api import contract
from spotrun_trainer import launcher


def ranks_per_node(flag: int | None, env: Mapping[str, str]) -> int:
    """``--nproc-per-node``, else ``SPOTRUN_PROCS_PER_NODE`` (spec.procsPerNode), else 1."""
    if flag is not None:
        return flag
    raw = env.get(contract.ENV_PROCS_PER_NODE, "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else 1


def grace_seconds(env: Mapping[str, str]) -> float:
    raw = env.get(contract.ENV_TERMINATION_GRACE_SECONDS, "").strip()
    try:
        return float(raw) if raw else float(contract.DEFAULT_TERMINATION_GRACE_SECONDS)
    except ValueError:
        return float(contract.DEFAULT_TERMINATION_GRACE_SECONDS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spotrun_trainer.launch", description=__doc__)
    parser.add_argument("--nproc-per-node", type=int, help="ranks (default: procsPerNode)")
    parser.add_argument("script", help="the training script")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    a = parser.parse_args(argv)
    if a.nproc_per_node is not None and a.nproc_per_node < 1:
        parser.error("--nproc-per-node must be >= 1")
    nproc = ranks_per_node(a.nproc_per_node, os.environ)
    if nproc == 1:
        os.execv(sys.executable, [sys.executable, a.script, *a.args])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s launcher %(message)s")
    return launcher.launch(a.args, nproc, grace_seconds(os.environ), script=a.script)


if __name__ == "__main__":
    sys.exit(main())
