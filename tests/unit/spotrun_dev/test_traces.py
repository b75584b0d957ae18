from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from spotrun_dev import trace_match, traces

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


FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "signals"
COMPONENT_FIXTURES = [
    p
    for p in sorted(FIXTURES.glob("*.yaml"))
    if not p.name.startswith("_") and "queue" not in p.name
]
CLUSTER_ACTORS = ("kube-controller-manager", "cloud-controller-manager", "kube-apiserver")


def _component_taint(fixture: dict[str, Any]) -> dict[str, Any] | None:
    """The first taint the component itself adds, per the fixture from its source."""
    for write in fixture["writes"]:
        if write["actor"].startswith(CLUSTER_ACTORS):
            continue
        for change in write["changes"]:
            if "taint_added" in change:
                return dict(change["taint_added"])
    return None


@pytest.mark.parametrize("path", COMPONENT_FIXTURES, ids=lambda p: p.stem)
def test_signal_taint_is_the_components_first_taint(path: Path) -> None:
    fixture = trace_match.load_fixture(path)
    want = _component_taint(fixture)
    signal = fixture["signal"]
    assert traces.SIGNAL_TAINT[signal] == (want["key"] if want else None)
    taint = traces.interruption_taint(signal, "evt-1")
    if want is None:
        assert taint is None
        return
    assert taint is not None and taint["effect"] == want["effect"]
    # NTH records its event id as the value; Karpenter's taint has none.
    assert (taint.get("value") is None) == (want.get("value") is None)


@pytest.mark.parametrize(
    "name", ["shutdown", "gke-preempt", "node-pressure", "critical-preemption"]
)
def test_kubelet_pod_status_matches_the_fixture(name: str) -> None:
    """The whole status spotrun-dev posts, read back, is what the kubelet reports."""
    fixture = trace_match.load_fixture(FIXTURES / f"{name}.yaml")
    change = next(
        c["pod_status"] for w in fixture["writes"] for c in w["changes"] if "pod_status" in c
    )
    plan_change = {
        "shutdown": traces.SHUTDOWN_POD_STATUS,
        "gke-preempt": traces.SHUTDOWN_POD_STATUS,
        "node-pressure": traces.NODE_PRESSURE_POD_STATUS,
        "critical-preemption": traces.PREEMPTING_POD_STATUS,
    }[name]
    status = traces.kubelet_stopped_pod_status(_pod(), dict(plan_change), NOW)
    view = trace_match.pod_status_view({"status": status})
    assert trace_match.value_matches(change, view), (change, view)


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
