"""Following a run's logs across attempts (pure plan; ``kubeapi.follow_logs`` does the I/O).

Each attempt is a new PyTorchJob with new pods, so ``kubectl logs -f`` on one pod ends at
the first preemption. The follower streams the live attempt's pod for one replica to its
end, then waits for the next attempt's pod to start and streams that one, until the run
is Succeeded or Failed (or gone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Pod phases in which the container has started, so the kubelet has a log to serve.
STARTED: Final = frozenset({"Running", "Succeeded", "Failed"})
# Run phases after which no attempt follows ("Cancelled": suspended by ``torchx cancel``).
TERMINAL: Final = frozenset({"Succeeded", "Failed", "Cancelled"})


@dataclass(frozen=True)
class Snapshot:
    """What the follower sees after reading the run and the live attempt's pod."""

    exists: bool
    phase: str | None  # status.phase of the run, or Cancelled
    attempt: int  # status.attempt (0: none yet)
    pod_phase: str | None  # phase of the replica's pod of that attempt (None: no pod)
    streamed: int  # newest attempt whose log was streamed to its end (0: none)
    follow: bool


@dataclass(frozen=True)
class Stream:
    attempt: int
    follow: bool


@dataclass(frozen=True)
class Wait:
    pass


@dataclass(frozen=True)
class Done:
    note: str = ""


Action = Stream | Wait | Done


def next_action(o: Snapshot) -> Action:
    """Stream the live attempt's log, wait for the next one, or stop."""
    if not o.exists:
        return Done("the run is gone")
    if o.attempt > o.streamed and o.pod_phase in STARTED:
        return Stream(o.attempt, o.follow and o.pod_phase == "Running")
    if not o.follow:
        if o.streamed:
            return Done()
        where = f"attempt {o.attempt}'s pod is {o.pod_phase or 'not created yet'}"
        return Done(f"no log yet: {where}" if o.attempt else "no log yet: no attempt yet")
    if o.phase in TERMINAL and (o.streamed >= o.attempt or o.pod_phase is None):
        return Done(f"the run is {o.phase}")
    return Wait()


def header(attempt: int, pod: str) -> str:
    return f"--- spotrun: attempt {attempt}, pod {pod} ---\n"
