from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from spotrun_dev import traces

NOW = dt.datetime(2026, 11, 21, 8, 0, 0, tzinfo=dt.UTC)


def _pod(containers: int = 1) -> dict[str, Any]:
    return {
        "spec": {"containers": [{"name": f"c{i}", "image": f"img{i}"} for i in range(containers)]},
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "c0",
                    "imageID": "sha256:abc",
                    "state": {"running": {"startedAt": "2026-11-21T07:00:00Z"}},
                }
            ],
        },
    }


@pytest.mark.parametrize(
    ("signal", "key"),
    [
        ("nth", "aws-node-termination-handler/spot-itn"),
        ("rebalance", "aws-node-termination-handler/rebalance-recommendation"),
        ("asg", "aws-node-termination-handler/asg-lifecycle-termination"),
        ("karpenter", "karpenter.sh/disrupted"),
    ],
)
def test_interruption_taints(signal: traces.Signal, key: str) -> None:
    taint = traces.interruption_taint(signal, "evt-1")
    assert taint is not None
    assert taint["key"] == key and taint["effect"] == "NoSchedule"
    # NTH records its event id in the value; Karpenter's taint has no value.
    assert taint.get("value") == (None if signal == "karpenter" else "evt-1")


@pytest.mark.parametrize("signal", ["loss", "shutdown"])
def test_signals_without_taint(signal: traces.Signal) -> None:
    assert traces.interruption_taint(signal, "x") is None


def test_shutdown_status_matches_kubelet() -> None:
    status = traces.shutdown_pod_status(_pod(), NOW)
    assert status["phase"] == "Failed"
    assert status["reason"] == "Terminated"
    assert status["message"] == "Pod was terminated in response to imminent node shutdown."
    dt_cond = next(c for c in status["conditions"] if c["type"] == "DisruptionTarget")
    assert dt_cond == {
        "type": "DisruptionTarget",
        "status": "True",
        "reason": "TerminationByKubelet",
        "message": status["message"],
        "lastTransitionTime": "2026-11-21T08:00:00Z",
    }
    term = status["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 143
    # startedAt is carried over from the running state, not reset to now.
    assert term["startedAt"] == "2026-11-21T07:00:00Z"
    assert status["containerStatuses"][0]["imageID"] == "sha256:abc"


@pytest.mark.parametrize(
    ("reason", "code", "creason"), [("exit1", 1, "Error"), ("oom", 137, "OOMKilled")]
)
def test_application_failures_carry_no_disruption(
    reason: traces.FailReason, code: int, creason: str
) -> None:
    status = traces.failed_pod_status(_pod(2), reason, NOW)
    assert status["phase"] == "Failed"
    assert [c["type"] for c in status["conditions"]] == ["Ready", "ContainersReady"]
    for cs in status["containerStatuses"]:
        assert cs["state"]["terminated"]["exitCode"] == code
        assert cs["state"]["terminated"]["reason"] == creason
    assert len(status["containerStatuses"]) == 2


def test_image_pull_status_is_pending_and_names_the_image() -> None:
    status = traces.failed_pod_status(_pod(), "imagepull", NOW)
    assert status["phase"] == "Pending"
    waiting = status["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ImagePullBackOff"
    assert '"img0"' in waiting["message"]


def test_completed_status() -> None:
    status = traces.completed_pod_status(_pod(), NOW)
    assert status["phase"] == "Succeeded"
    assert status["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert status["containerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"


def test_node_unknown_conditions_keep_last_heartbeat() -> None:
    conds = traces.node_unknown_conditions(NOW, "2026-11-21T07:59:00Z")
    ready = next(c for c in conds if c["type"] == "Ready")
    assert ready["status"] == "Unknown" and ready["reason"] == "NodeStatusUnknown"
    assert ready["lastHeartbeatTime"] == "2026-11-21T07:59:00Z"
    assert {c["type"] for c in conds} == {"Ready", "MemoryPressure", "DiskPressure", "PIDPressure"}
