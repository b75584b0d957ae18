"""Helpers of the cost and budget e2e tests: timestamps from status, the Table view of
``kubectl get tr``, a sample of the operator's /metrics (read with
``operator_metrics.scrape``), the run's events."""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import datetime
from typing import Any

from kubernetes import client

from spotrun_operator.facts.common import parse_time
from spotrun_operator.kubeio.kube import Kube

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
P4D = "p4d.24xlarge"
P4D_ON_DEMAND = 32.77  # USD/h, the operator's default table (docs/cost.md)
GPUS = 8

# start_operator(*flags, env={...}) -> the started Operator (fixture of conftest.py).
StartOperator = Callable[..., Any]


def free_port() -> int:
    """A loopback port nothing listens on (bound once, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ts(value: Any) -> datetime:
    t = parse_time(str(value) if value else None)
    assert t is not None, f"not a timestamp: {value!r}"
    return t


def seconds(start: Any, end: Any) -> float:
    return (ts(end) - ts(start)).total_seconds()


def node_usd(seconds_run: float, hourly: list[float]) -> float:
    """What ``hourly`` nodes cost over ``seconds_run``, summed node by node like cost.py."""
    total = 0.0
    for usd in hourly:
        total += seconds_run * usd / 3600.0
    return total


def printed_columns(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    """The run as ``kubectl get tr`` prints it (the API's Table), column name -> cell, plus
    ``object``: the full object the row was rendered from (same resourceVersion)."""
    table = Kube(api).request(
        "GET",
        f"/apis/spotrun.dev/v1alpha1/namespaces/{namespace}/trainingruns/{name}",
        query={"includeObject": "Object"},
        accept=TABLE,
    )
    assert table["kind"] == "Table", table
    (row,) = table["rows"]
    names = [c["name"] for c in table["columnDefinitions"]]
    return {**dict(zip(names, row["cells"], strict=True)), "object": row["object"]}


def sample(
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    return metrics.get((name, frozenset(labels.items())))


def run_events(core: client.CoreV1Api, namespace: str, name: str) -> list[client.CoreV1Event]:
    evs = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name},involvedObject.kind=TrainingRun"
    ).items
    evs.sort(key=lambda e: (e.last_timestamp or e.event_time, e.metadata.name))
    return list(evs)


def events_of(
    core: client.CoreV1Api, namespace: str, name: str, reason: str
) -> list[client.CoreV1Event]:
    return [e for e in run_events(core, namespace, name) if e.reason == reason]
