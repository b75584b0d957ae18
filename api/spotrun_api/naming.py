"""The names of a run's children and which attempt is live: the operator creates, adopts and
deletes by these names, and the CLI and the dev tools find a run's jobs and pods by them.

Attempt N of run R is the PyTorchJob ``R-aN``; the Kubeflow training operator names its
pods ``R-aN-master-0`` and ``R-aN-worker-<i>``. Every create is idempotent because the name
is deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

_JOB_RE: Final = re.compile(r"^(?P<run>.+)-a(?P<n>[1-9][0-9]*)$")


def job_name(run: str, attempt: int) -> str:
    """Deterministic PyTorchJob name of an attempt: every create is idempotent."""
    return f"{run}-a{attempt}"


def parse_job_name(run: str, name: str) -> int | None:
    """The attempt number of ``<run>-a<N>``; None for any other name."""
    m = _JOB_RE.match(name)
    if not m or m.group("run") != run:
        return None
    return int(m.group("n"))


def pod_name(run: str, attempt: int, replica: int) -> str:
    """Pod of replica ``replica`` (0: the master) of an attempt's PyTorchJob, named the way
    the Kubeflow training operator names them (<job>-master-0, <job>-worker-<i>)."""
    job = job_name(run, attempt)
    return f"{job}-master-0" if replica == 0 else f"{job}-worker-{replica - 1}"


def live_attempt(status_attempt: int | None, job_attempts: Iterable[int] = ()) -> int:
    """The live attempt: the highest of ``status.attempt`` and the attempts whose jobs exist
    (a job the status does not know is adopted, never duplicated); 0 when none was created.
    A reader that sees only the status (the CLI) passes no jobs."""
    return max([status_attempt or 0, *job_attempts])
