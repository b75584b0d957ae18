"""Small polling helpers shared by the e2e tests (deadlines, never bare sleeps)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client

T = TypeVar("T")

PYTORCHJOB = ("kubeflow.org", "v1", "pytorchjobs")


def poll(what: str, fn: Callable[[], T | None], timeout: float = 60, interval: float = 0.25) -> T:
    """Call ``fn`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def holds(what: str, fn: Callable[[], bool], duration: float, interval: float = 0.25) -> None:
    """Assert ``fn`` stays true for ``duration`` seconds (a state nothing may undo)."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        assert fn(), f"{what} stopped holding"
        time.sleep(interval)


def pytorchjob(name: str, workers: int, gpus: int = 8, capacity: str = "SPOT") -> dict[str, Any]:
    """A PyTorchJob of 1 master + ``workers`` workers, each asking a whole p4d."""

    def replica(n: int) -> dict[str, Any]:
        return {
            "replicas": n,
            "restartPolicy": "Never",
            "template": {
                "spec": {
                    "nodeSelector": {"eks.amazonaws.com/capacityType": capacity},
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "terminationGracePeriodSeconds": 110,
                    "containers": [
                        {
                            "name": "pytorch",
                            "image": "spotrun/trainer:dev",
                            "command": ["python", "-m", "spotrun_lm"],
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                        }
                    ],
                }
            },
        }

    specs: dict[str, Any] = {"Master": replica(1)}
    if workers:
        specs["Worker"] = replica(workers)
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {"pytorchReplicaSpecs": specs},
    }


def job_pods(core: client.CoreV1Api, namespace: str, job: str) -> list[client.V1Pod]:
    sel = f"training.kubeflow.org/job-name={job}"
    return list(core.list_namespaced_pod(namespace, label_selector=sel).items)


def running_pods(
    core: client.CoreV1Api, namespace: str, job: str, n: int, timeout: float = 90
) -> list[client.V1Pod]:
    """Wait for ``n`` live pods of the job to be Running; return them."""

    def ready() -> list[client.V1Pod] | None:
        pods = [p for p in job_pods(core, namespace, job) if not p.metadata.deletion_timestamp]
        if len(pods) == n and all(p.status.phase == "Running" for p in pods):
            return pods
        return None

    pods: list[client.V1Pod] = poll(f"{n} running pods of {job}", ready, timeout=timeout)
    return pods


def job_condition(
    custom: client.CustomObjectsApi, namespace: str, job: str, ctype: str
) -> dict[str, Any] | None:
    obj = custom.get_namespaced_custom_object(*PYTORCHJOB[:2], namespace, PYTORCHJOB[2], job)
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == ctype and cond["status"] == "True":
            return dict(cond)
    return None


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return None
