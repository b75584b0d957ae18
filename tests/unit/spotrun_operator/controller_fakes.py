"""Builders of the JSON objects the operator observes (pods, nodes, PyTorchJobs, runs),
shaped like the apiserver's output, for the pure modules' unit tests."""

from __future__ import annotations

import datetime as dt
from typing import Any

from spotrun_api.base import to_json
from spotrun_api.status import parse_status
from spotrun_operator.decisions.reconcile import decide
from spotrun_operator.facts.common import LABEL_ATTEMPT, LABEL_REPLICA_TYPE, LABEL_RUN, fmt_time
from spotrun_operator.facts.config import OperatorConfig
from spotrun_operator.judging.classify import NodeInfo
from spotrun_operator.model.plan import Decision, Observed, RunRef
from spotrun_operator.model.reducers import get_condition
from spotrun_operator.watching.observe import parse_run_spec

T0 = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
REF = RunRef(name="llm", namespace="ml", uid="uid-run-1", generation=1)
CFG = OperatorConfig(
    backoff_base_seconds=10.0,
    backoff_jitter=0.0,
    failure_settle_seconds=5.0,
    config_error_grace_seconds=30.0,
)

SPOT_LABELS = {
    "node.kubernetes.io/instance-type": "p4d.24xlarge",
    "topology.kubernetes.io/zone": "us-east-1a",
    "eks.amazonaws.com/capacityType": "SPOT",
    "karpenter.sh/capacity-type": "spot",
}


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def ts(seconds: float) -> str:
    return fmt_time(at(seconds))


def spec(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "image": "spotrun/trainer:dev",
        "command": ["python", "-m", "spotrun_lm"],
        "nodes": 2,
        "gpusPerNode": 8,
        "capacity": {"type": "spot", "instanceTypes": ["p4d.24xlarge"]},
        "checkpoint": {"volume": {"claimName": "ckpt"}, "path": "/checkpoints", "interval": "15m"},
        "maxPreemptions": 100,
        "maxFailures": 3,
        "terminationGracePeriodSeconds": 110,
    }
    base.update(over)
    return base


def node(
    name: str,
    *,
    taints: tuple[str, ...] = (),
    ready: str = "True",
    message: str = "",
    exists: bool = True,
    zone: str = "us-east-1a",
) -> NodeInfo:
    labels = {**SPOT_LABELS, "topology.kubernetes.io/zone": zone}
    return NodeInfo(name, exists, labels, ("nvidia.com/gpu", *taints), ready, message)


def pod(
    name: str,
    *,
    attempt: int = 1,
    node_name: str | None = "n1",
    phase: str = "Running",
    master: bool = True,
    uid: str | None = None,
    exit_code: int | None = None,
    term_reason: str = "Error",
    finished: float = 0.0,
    waiting: str | None = None,
    disruption: str | None = None,
    pod_reason: str | None = None,
    deleting: bool = False,
    unschedulable: str | None = None,
) -> dict[str, Any]:
    labels = {
        LABEL_RUN: REF.name,
        LABEL_ATTEMPT: str(attempt),
        LABEL_REPLICA_TYPE: "master" if master else "worker",
    }
    meta: dict[str, Any] = {
        "name": name,
        "namespace": REF.namespace,
        "labels": labels,
        "uid": uid or f"uid-{name}",
    }
    if deleting:
        meta["deletionTimestamp"] = ts(0)
    state: dict[str, Any] = {"running": {"startedAt": ts(-100)}}
    if exit_code is not None:
        state = {
            "terminated": {"exitCode": exit_code, "reason": term_reason, "finishedAt": ts(finished)}
        }
    if waiting:
        state = {"waiting": {"reason": waiting, "message": f"{waiting}: image not found"}}
    conditions: list[dict[str, Any]] = []
    if disruption:
        conditions.append(
            {"type": "DisruptionTarget", "status": "True", "reason": disruption, "message": "bye"}
        )
    if unschedulable:
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": unschedulable,
            }
        )
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "containerStatuses": [{"name": "pytorch", "state": state}],
    }
    if pod_reason:
        status["reason"] = pod_reason
    spec_: dict[str, Any] = {"nodeName": node_name} if node_name else {}
    return {"metadata": meta, "spec": spec_, "status": status}


def gang(
    attempt: int = 1, nodes: tuple[str, ...] = ("n1", "n2"), **kw: Any
) -> list[dict[str, Any]]:
    """A Running gang: master on nodes[0], workers on the rest."""
    return [
        pod(
            f"{REF.name}-a{attempt}-{'master' if i == 0 else 'worker'}-{max(0, i - 1)}",
            attempt=attempt,
            node_name=n,
            master=i == 0,
            **kw,
        )
        for i, n in enumerate(nodes)
    ]


def job(attempt: int = 1, condition: str | None = None) -> dict[str, Any]:
    conds = (
        [{"type": condition, "status": "True", "message": f"job {condition}"}] if condition else []
    )
    return {
        "metadata": {"name": f"{REF.name}-a{attempt}", "creationTimestamp": ts(0)},
        "status": {"conditions": conds},
    }


def observed(
    *,
    now: float = 0.0,
    spec_over: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
    jobs: dict[int, dict[str, Any]] | None = None,
    pods: list[dict[str, Any]] | None = None,
    nodes: list[NodeInfo] | None = None,
    **kw: Any,
) -> Observed:
    parsed, error = parse_run_spec(spec(**(spec_over or {})))
    return Observed(
        ref=REF,
        spec=parsed,
        spec_error=error,
        status=parse_status(status),
        now=at(now),
        jobs=jobs or {},
        pods=pods or [],
        nodes={n.name: n for n in (nodes or [node("n1"), node("n2", zone="us-east-1b")])},
        **kw,
    )


# --- decisions applied the way the apiserver does ------------------------------------


def merge(status: dict[str, Any], d: Decision) -> dict[str, Any]:
    """Apply a decision's status patch the way the apiserver does: an RFC 7386 merge
    patch (nested objects merge, null deletes, lists are replaced)."""
    merged = merge_patch(status, d.status or {})
    assert isinstance(merged, dict)
    return merged


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    c = get_condition(parse_status(status).conditions, ctype)
    assert c is not None, f"no {ctype} condition"
    return to_json(c)


def running_status() -> dict[str, Any]:
    """Attempt 1 created and seen running on n1, n2."""
    d = decide(observed(), CFG)
    st = merge({}, d)
    d = decide(observed(now=5, status=st, jobs={1: job(1)}, pods=gang(1)), CFG)
    return merge(st, d)
