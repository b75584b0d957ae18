"""The status writer fills the printer columns' strings (status.display) and each
attempt's step marks (startStep when created, endStep when its outcome is recorded)."""

from __future__ import annotations

from typing import Any

from controller_fakes import CFG, gang, job, node, observed

from spotrun_dev import traces
from spotrun_operator.decisions.reconcile import decide
from spotrun_operator.model.plan import Decision


def _merge(status: dict[str, Any], d: Decision) -> dict[str, Any]:
    out = {**status, **(d.status or {})}
    return {k: v for k, v in out.items() if v is not None}


def test_display_and_step_marks_follow_a_preemption() -> None:
    st = _merge({}, decide(observed(), CFG))
    assert st["display"] == {
        "cost": "$0.00",
        "savings": "0%",
        "lostWork": "0s",
        "gpuHours": "0.0",
        "last": "-",
    }
    assert st["attempts"][0]["startStep"] == 0  # a fresh start
    st = _merge(st, decide(observed(now=5, status=st, jobs={1: job(1)}, pods=gang(1)), CFG))
    st["progress"] = {"step": 480, "checkpointStep": 450, "attempt": 1}
    tainted = [node("n1"), node("n2", taints=(traces.NTH_SPOT_ITN,), zone="us-east-1b")]
    obs = observed(now=65, status=st, jobs={1: job(1)}, pods=gang(1), nodes=tainted)
    st = _merge(st, decide(obs, CFG))
    assert st["attempts"][0]["endStep"] == 480
    assert st["display"]["last"] == "spot-interruption a1"
    assert st["display"]["lastAt"] == st["attempts"][0]["endedAt"]
    assert st["display"]["lostWork"] == "1m00s"
    st = _merge(st, decide(observed(now=70, status=st, nodes=tainted), CFG))  # gang gone
    st = _merge(st, decide(observed(now=90, status=st, nodes=tainted), CFG))  # backoff over
    assert st["attempt"] == 2
    assert st["attempts"][1]["startStep"] == 450  # resumes from the newest checkpoint
