"""Pure views: TorchX states, the log-following plan, the ledger table, display strings."""

from __future__ import annotations

from typing import Any

import pytest
from torchx.specs import AppState

from spotrun_api import display as printer
from spotrun_api import naming
from spotrun_api.base import to_json
from spotrun_api.status import Attempt, Progress, TrainingRunStatus
from spotrun_cli import follow, ledger, runview
from spotrun_cli.translate import ANN_CANCELLED

ATTEMPTS: list[dict[str, Any]] = [
    {
        "attempt": 1,
        "nodes": 2,
        "zones": ["us-east-1a", "us-east-1a"],
        "createdAt": "2026-11-22T10:00:00Z",
        "startedAt": "2026-11-22T10:01:00Z",
        "endedAt": "2026-11-22T11:31:05Z",
        "outcome": "Preempted",
        "reason": "spot-interruption",
        "lostWorkSeconds": 750.0,
        "startStep": 0,
        "endStep": 1800,
        "spotUSD": 30.5,
        "onDemandUSD": 0.0,
    },
    {
        "attempt": 2,
        "nodes": 2,
        "zone": "us-east-1b",
        "startedAt": "2026-11-22T11:35:00Z",
        "endedAt": "2026-11-22T11:50:00Z",
        "outcome": "Failed",
        "reason": "OOMKilled",
        "lostWorkSeconds": 65.0,
        "startStep": 1500,
        "endStep": 1700,
        "spotUSD": 5.0,
    },
    {"attempt": 3, "nodes": 2, "startedAt": "2026-11-22T12:00:00Z", "startStep": 1500},
]
STATUS: dict[str, Any] = {
    "phase": "Running",
    "attempt": 3,
    "preemptions": 1,
    "failures": 1,
    "progress": {"step": 1620, "checkpointStep": 1600, "attempt": 3},
    "cost": {"totalUSD": 1204.4, "savingsPercent": 66.6, "gpuHours": 37.25},
    "attempts": ATTEMPTS,
}


def run(status: dict[str, Any] | None, cancelled: bool = False) -> dict[str, Any]:
    ann = {ANN_CANCELLED: "true"} if cancelled else {}
    obj: dict[str, Any] = {"metadata": {"name": "r", "namespace": "ml", "annotations": ann}}
    if status is not None:
        obj["status"] = status
    return obj


@pytest.mark.parametrize(
    ("status", "cancelled", "state"),
    [
        (None, False, AppState.SUBMITTED),
        ({"phase": "Pending"}, False, AppState.PENDING),
        ({"phase": "Running"}, False, AppState.RUNNING),
        ({"phase": "Recovering"}, False, AppState.PENDING),  # TorchX: preempted -> PENDING
        ({"phase": "Suspended"}, False, AppState.PENDING),
        ({"phase": "Suspended"}, True, AppState.CANCELLED),
        ({"phase": "Running"}, True, AppState.RUNNING),  # still stopping
        ({"phase": "Succeeded"}, True, AppState.SUCCEEDED),
        ({"phase": "Failed"}, False, AppState.FAILED),
    ],
)
def test_app_state(status: dict[str, Any] | None, cancelled: bool, state: AppState) -> None:
    assert runview.app_state(run(status, cancelled)) == state


def test_restarts_message_and_replicas() -> None:
    r = run({"phase": "Running", "attempt": 3, "message": "attempt 3 running"}, cancelled=True)
    assert runview.restarts(r) == 2
    assert runview.message(r).startswith("cancelling:") and "attempt 3 running" in runview.message(
        r
    )
    assert naming.pod_name("r", 3, 0) == "r-a3-master-0"
    assert naming.pod_name("r", 3, 2) == "r-a3-worker-1"

    def pod(kind: str, idx: int, phase: str, deleting: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": f"r-a3-{kind}-{idx}",
            "labels": {runview.REPLICA_LABEL: kind, runview.INDEX_LABEL: str(idx)},
        }
        if deleting:
            meta["deletionTimestamp"] = "2026-11-22T12:00:00Z"
        return {"metadata": meta, "status": {"phase": phase}}

    pods = [pod("worker", 1, "Running", deleting=True), pod("master", 0, "Running")]
    assert runview.replicas(pods, 3) == [
        (0, AppState.RUNNING, "r-a3-master-0"),
        (1, AppState.PENDING, ""),
        (2, AppState.PENDING, "r-a3-worker-1"),
    ]


def obs(**kw: Any) -> follow.Snapshot:
    base: dict[str, Any] = {
        "exists": True,
        "phase": "Running",
        "attempt": 1,
        "pod_phase": "Running",
        "streamed": 0,
        "follow": True,
    }
    return follow.Snapshot(**{**base, **kw})


def test_follow_plan_across_attempts() -> None:
    # Live attempt running: stream it, following.
    assert follow.next_action(obs()) == follow.Stream(1, True)
    # Its log ended (preempted); the run recovers: wait for attempt 2.
    assert follow.next_action(obs(phase="Recovering", streamed=1, pod_phase=None)) == follow.Wait()
    assert follow.next_action(obs(attempt=2, streamed=1, pod_phase="Pending")) == follow.Wait()
    assert follow.next_action(obs(attempt=2, streamed=1)) == follow.Stream(2, True)
    # A finished pod is read to its end, not followed.
    assert follow.next_action(obs(attempt=2, pod_phase="Failed", streamed=1)) == follow.Stream(
        2, False
    )
    # The run ended after its last attempt was streamed: done.
    done = follow.next_action(obs(phase="Succeeded", attempt=2, streamed=2, pod_phase="Succeeded"))
    assert done == follow.Done("the run is Succeeded")
    assert follow.next_action(obs(exists=False)) == follow.Done("the run is gone")


def test_follow_plan_without_follow() -> None:
    assert follow.next_action(obs(follow=False)) == follow.Stream(1, False)
    assert follow.next_action(obs(follow=False, streamed=1)) == follow.Done()
    pending = follow.next_action(obs(follow=False, pod_phase="Pending"))
    assert pending == follow.Done("no log yet: attempt 1's pod is Pending")
    assert follow.next_action(obs(follow=False, attempt=0, pod_phase=None)) == follow.Done(
        "no log yet: no attempt yet"
    )


def test_ledger_rows() -> None:
    status = TrainingRunStatus.model_validate(STATUS)
    rows = [ledger.row(Attempt.model_validate(e), status) for e in ATTEMPTS]
    assert rows[0] == [
        "1",
        "2",
        "us-east-1a",
        "11-22 10:01:00",
        "11-22 11:31:05",
        "Preempted",
        "spot-interruption",
        "1800 (0->1800)",
        "12m30s",
        "$30.50",
    ]
    assert rows[1][2] == "us-east-1b" and rows[1][5:10] == [
        "Failed",
        "OOMKilled",
        "200 (1500->1700)",
        "1m05s",
        "$5.00",
    ]
    # The live attempt: phase as outcome, steps from the trainer's progress, no cost yet.
    assert rows[2][4:10] == ["-", "Running", "-", "120 (1500->1620)", "-", "-"]


def test_describe_text() -> None:
    text = ledger.describe({**run(STATUS), "spec": {"nodes": 2, "gpusPerNode": 8}})
    lines = text.splitlines()
    assert "Phase:        Running" in lines
    assert "Cost:         $1,204.40 (saving 67% against on-demand)" in lines
    header = next(line for line in lines if line.startswith("ATTEMPT"))
    assert header.split() == list(ledger.COLUMNS)
    # Columns line up: every row's OUTCOME starts where the header's does.
    col = header.index("OUTCOME")
    body = lines[lines.index(header) + 1 :]
    assert [line[col:].split()[0] for line in body] == ["Preempted", "Failed", "Running"]
    assert ledger.describe(run({"phase": "Pending"})).endswith("No attempts yet.\n")


def test_describe_counts_kueue_preemptions_apart() -> None:
    plain = ledger.describe(run({"phase": "Pending", "preemptions": 1, "failures": 0}))
    assert "Attempt:      0 (preemptions 1, failures 0)" in plain.splitlines()
    queued = ledger.describe(run({"phase": "Pending", "attempt": 3, "queuePreemptions": 2}))
    assert "Attempt:      3 (preemptions 0, failures 0, queue preemptions 2)" in queued.splitlines()


def test_printer_display() -> None:
    d = to_json(printer.display(TrainingRunStatus.model_validate(STATUS)))
    assert d == {
        "cost": "$1,204.40",
        "savings": "67%",
        "lostWork": "13m35s",
        "gpuHours": "37.2",
        "last": "failed OOMKilled a2",
        "lastAt": "2026-11-22T11:50:00Z",
    }
    assert to_json(printer.display(TrainingRunStatus())) == {
        "cost": "$0.00",
        "savings": "-",
        "lostWork": "0s",
        "gpuHours": "0.0",
        "last": "-",
    }
    pre = printer.display(TrainingRunStatus.model_validate({"attempts": ATTEMPTS[:1]}))
    assert pre.last == "spot-interruption a1"
    sus = Attempt.model_validate({"attempt": 4, "outcome": "Suspended", "reason": "Suspended"})
    assert printer.last_label(sus) == "suspended a4"
    budget = Attempt.model_validate({"attempt": 5, "outcome": "BudgetExceeded"})
    assert printer.last_label(budget) == "budget-exceeded a5"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0, "0s"),
        (59.6, "1m00s"),
        (754, "12m34s"),
        (3600 * 3 + 300, "3h05m"),
        (200000, "2d07h"),
    ],
)
def test_fmt_seconds(seconds: float | None, text: str) -> None:
    assert printer.fmt_seconds(seconds) == text


def test_step_marks() -> None:
    assert printer.start_step(Progress.from_status({"checkpointStep": 1600})) == 1600
    assert printer.start_step(None) == 0
    live = Progress.from_status({"step": 1620, "attempt": 3})
    assert printer.end_step(3, live) == 1620
    assert printer.end_step(4, live) is None
    ended = {"attempt": 1, "startStep": 10, "endStep": 25, "outcome": "Failed"}
    assert printer.steps_done(Attempt.model_validate(ended), None) == 15
    assert (
        printer.steps_done(Attempt(attempt=1), Progress.from_status({"step": 5, "attempt": 1}))
        is None
    )
    # A live attempt counts to the trainer's newest step.
    running = Attempt.model_validate({"attempt": 1, "startStep": 10})
    assert printer.steps_done(running, Progress.from_status({"step": 25, "attempt": 1})) == 15


def test_api_message_prefers_the_apiservers_words() -> None:
    from kubernetes.client.rest import ApiException

    from spotrun_cli.kubeapi import api_message

    status = ApiException(status=422, reason="Unprocessable Entity")
    status.body = b'{"kind": "Status", "message": "spec.capacity.type: Unsupported value"}'
    assert api_message(status) == "spec.capacity.type: Unsupported value"
    plain = ApiException(status=500, reason="Internal Server Error")
    plain.body = "no preferred addresses found\n"
    assert api_message(plain) == "no preferred addresses found"
    bare = ApiException(status=503, reason="Service Unavailable")
    assert api_message(bare) == "Service Unavailable"
