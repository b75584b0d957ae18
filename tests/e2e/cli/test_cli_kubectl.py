"""``kubectl get tr`` printer columns and ``kubectl spotrun describe`` rendering a golden
status: every column and ledger cell of a run with a preemption, an OOMKilled failure and a
live attempt, exact to the cent, read back with the real kubectl (the plugin through
kubectl's plugin mechanism when kubectl is built). The status is written through the status
subresource with the display strings of ``spotrun_api.display``: a rendering test of fixed
values that no interruption could make deterministic. The golden status holds only what the
operator writes: the step fields are the trainer's, and the columns and ledger cells they fill are
checked on what the real trainer wrote, in tests/e2e/realnodes/test_real_prometheus.py."""

from __future__ import annotations

import copy
import os
import subprocess
from typing import Any

import pytest
import yaml
from kubernetes import client
from torchx.specs import AppState

from controller_helpers import create, training_run
from controller_process import CRD
from kubectl_helpers import BIN, KUBECTL, cells, kubectl
from spotrun_api.base import to_json
from spotrun_api.display import display
from spotrun_api.status import TrainingRunStatus
from spotrun_cli.torchx_scheduler import SpotrunScheduler
from spotrun_operator.kubeio.kube import Kube

TR = ("spotrun.dev", "v1alpha1", "trainingruns")

STATUS: dict[str, Any] = {
    "phase": "Running",
    "message": "attempt 3 running on spot-p4d-1, spot-p4d-4",
    "attempt": 3,
    "preemptions": 1,
    "failures": 1,
    "cost": {"totalUSD": 12.4, "savingsPercent": 66.6, "gpuHours": 6.5},
    "lastPreemption": {"attempt": 1, "time": "2026-11-22T11:31:00Z", "signal": "spot-interruption"},
    "attempts": [
        {
            "attempt": 1,
            "nodes": 2,
            "zones": ["us-east-1a", "us-east-1b"],
            "startedAt": "2026-11-22T10:01:00Z",
            "endedAt": "2026-11-22T11:31:05Z",
            "outcome": "Preempted",
            "reason": "spot-interruption",
            "lostWorkSeconds": 750,
            "startStep": 0,
            "endStep": 1800,
            "spotUSD": 9.5,
            "onDemandUSD": 0,
        },
        {
            "attempt": 2,
            "nodes": 2,
            "zones": ["us-east-1c", "us-east-1c"],
            "startedAt": "2026-11-22T11:35:00Z",
            "endedAt": "2026-11-22T11:50:00Z",
            "outcome": "Failed",
            "reason": "OOMKilled",
            "lostWorkSeconds": 65,
            "startStep": 1500,
            "endStep": 1700,
            "spotUSD": 1.25,
        },
        {"attempt": 3, "nodes": 2, "startedAt": "2026-11-22T12:00:00Z", "startStep": 1500},
    ],
}


def apply_crd(api: client.ApiClient) -> None:
    """Server-side apply this checkout's CRD (the status fields and columns tested here)."""
    body = yaml.safe_load(CRD.read_text())
    Kube(api).request(
        "PATCH",
        f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{body['metadata']['name']}",
        query={"fieldManager": "spotrun-e2e", "force": "true"},
        body=body,
        content_type="application/apply-patch+yaml",
    )


@pytest.fixture
def story(custom: client.CustomObjectsApi, namespace: str, crd: dict[str, Any]) -> str:
    """Run ``story`` with the status the operator would write (display strings included)."""
    apply_crd(custom.api_client)  # again: on a shared cluster another checkout may differ
    create(custom, namespace, training_run("story"))
    status = copy.deepcopy(STATUS)
    status["display"] = to_json(display(TrainingRunStatus.model_validate(status)))
    custom.patch_namespaced_custom_object_status(
        *TR[:2], namespace, TR[2], "story", {"status": status}
    )
    return "story"


def test_printer_columns(cluster: Any, namespace: str, story: str) -> None:
    kc = cluster.kubeconfig
    (row,) = cells(kubectl(kc, "get", "tr", "-n", namespace))
    assert list(row) == [
        "NAME", "PHASE", "ATTEMPT", "PREEMPTIONS", "FAILURES", "STEP", "CHECKPOINT",
        "COST", "LAST", "LAST-AGE", "AGE",
    ]  # fmt: skip
    assert (row["PHASE"], row["ATTEMPT"], row["PREEMPTIONS"], row["FAILURES"]) == (
        "Running",
        "3",
        "1",
        "1",
    )
    # No trainer reported steps here: kubectl leaves a CRD column of an absent field blank.
    assert (row["STEP"], row["CHECKPOINT"], row["COST"]) == ("", "", "$12.40")
    assert row["LAST"] == "failed OOMKilled a2"
    assert row["LAST-AGE"] not in ("", "<none>") and row["LAST-AGE"][-1] in "smhd"

    (wide,) = cells(kubectl(kc, "get", "tr", "-n", namespace, "-o", "wide"))
    assert (wide["SAVINGS"], wide["LOST-WORK"], wide["GPU-HOURS"]) == ("67%", "13m35s", "6.5")
    assert wide["MESSAGE"] == STATUS["message"]


def test_describe_ledger(cluster: Any, namespace: str, story: str) -> None:
    text = kubectl(cluster.kubeconfig, "spotrun", "-n", namespace, "describe", story)
    lines = text.splitlines()
    assert "Phase:        Running" in lines
    assert "Cost:         $12.40 (saving 67% against on-demand)" in lines
    start = next(i for i, x in enumerate(lines) if x.startswith("ATTEMPT"))
    table = cells("\n".join(lines[start:]))
    assert [r["ATTEMPT"] for r in table] == ["1", "2", "3"]
    assert table[0] == {
        "ATTEMPT": "1",
        "NODES": "2",
        "ZONE": "us-east-1a,us-east-1b",
        "START": "11-22 10:01:00",
        "END": "11-22 11:31:05",
        "OUTCOME": "Preempted",
        "SIGNAL": "spot-interruption",
        "STEPS": "1800 (0->1800)",
        "LOST": "12m30s",
        "COST": "$9.50",
    }
    assert (table[1]["ZONE"], table[1]["OUTCOME"], table[1]["SIGNAL"]) == (
        "us-east-1c",
        "Failed",
        "OOMKilled",
    )
    assert (table[1]["STEPS"], table[1]["LOST"], table[1]["COST"]) == (
        "200 (1500->1700)",
        "1m05s",
        "$1.25",
    )
    # The live attempt: still running; no trainer has reported its steps yet.
    assert (table[2]["END"], table[2]["OUTCOME"], table[2]["STEPS"]) == ("-", "Running", "-")


def test_describe_unknown_run_fails_clearly(
    cluster: Any, namespace: str, crd: dict[str, Any]
) -> None:
    cmd = [str(KUBECTL), "spotrun"] if KUBECTL.exists() else [str(BIN / "kubectl-spotrun")]
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    done = subprocess.run(
        [*cmd, "-n", namespace, "describe", "nope"],
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f'trainingrun "nope" not found in {namespace}' in done.stderr


def test_scheduler_reads_the_story(cluster: Any, namespace: str, story: str) -> None:
    """The torchx scheduler's read side on the same object, in process."""
    sched = SpotrunScheduler("e2e", api=cluster.api_client())
    desc = sched.describe(f"{namespace}:{story}")
    assert desc is not None
    assert (desc.state, desc.num_restarts, desc.msg) == (AppState.RUNNING, 2, STATUS["message"])
    assert desc.metadata == {
        "phase": "Running",
        "attempt": "3",
        "preemptions": "1",
        "failures": "1",
    }
    # No pods exist for attempt 3 here (no operator): both replicas read PENDING.
    (role,) = desc.roles_statuses
    assert [(r.id, r.state) for r in role.replicas] == [
        (0, AppState.PENDING),
        (1, AppState.PENDING),
    ]
    native = sched.describe_native(f"{namespace}:{story}")
    assert native is not None
    assert native.request.resource["status"]["display"]["cost"] == "$12.40"
    assert sched.describe(f"{namespace}:nope") is None
