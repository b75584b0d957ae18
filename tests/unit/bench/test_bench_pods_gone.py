"""The bench's ``pods_gone`` boundary follows the operator's own rule (children.gang_gone):
the old gang is gone when each pod is deleted or terminal, not only once deleted."""

from __future__ import annotations

from typing import Any

import recovery_phases as rp
from scale_objects import Observer


def pod(name: str, attempt: int, phase: str) -> dict[str, Any]:
    labels = {rp.JOB_LABEL: f"run-a{attempt}"}
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": "n1"},
        "status": {"phase": phase},
    }


def watching(pods: list[str]) -> tuple[Observer, rp.Recovery]:
    obs = Observer()
    rec = rp.Recovery(run="run", size=len(pods), signal="shutdown", t_signal=100.0)
    rec.old_pods = set(pods)
    obs.sizes["run"], obs.recs["run"] = len(pods), rec
    return obs, rec


def test_a_gang_whose_pods_ended_failed_is_gone_before_they_are_deleted() -> None:
    obs, rec = watching(["p0", "p1"])
    obs.on_pod("MODIFIED", pod("p0", 1, "Failed"), 101.0)
    assert rec.t_pods_gone is None  # p1 still runs: it may still be saving
    obs.on_pod("MODIFIED", pod("p1", 1, "Failed"), 102.0)
    obs.on_pod("DELETED", pod("p1", 1, "Failed"), 109.0)
    assert rec.t_pods_gone == 102.0


def test_running_pods_count_only_once_deleted() -> None:
    obs, rec = watching(["p0"])
    obs.on_pod("MODIFIED", pod("p0", 1, "Running"), 101.0)
    # a pod of the next attempt ending says nothing of the old gang
    obs.on_pod("MODIFIED", pod("q0", 2, "Failed"), 102.0)
    assert rec.t_pods_gone is None
    obs.on_pod("DELETED", pod("p0", 1, "Running"), 103.0)
    assert rec.t_pods_gone == 103.0
