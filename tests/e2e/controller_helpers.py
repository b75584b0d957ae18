"""TrainingRun helpers for the operator's e2e tests (polling with deadlines only)."""

from __future__ import annotations

import copy
from typing import Any

from kubernetes import client

from kube_helpers import PYTORCHJOB, poll, running_pods
from spotrun_dev import inject
from spotrun_operator.facts.common import LABEL_ATTEMPT, LABEL_RUN

TR = ("spotrun.dev", "v1alpha1", "trainingruns")
SIGNAL_OF = {
    "nth": "spot-interruption",
    "karpenter": "karpenter-disruption",
    "asg": "asg-termination",
    "loss": "node-lost",
    "shutdown": "node-shutdown",
}


def training_run(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "image": "spotrun/trainer:dev",
        "command": ["python", "-m", "spotrun_lm"],
        "nodes": 2,
        "gpusPerNode": 8,
        "checkpoint": {"volume": {"claimName": "ckpt"}, "interval": "5m"},
        "maxFailures": 3,
    }
    base.update(copy.deepcopy(spec))
    return {
        "apiVersion": "spotrun.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": base,
    }


def create(custom: client.CustomObjectsApi, namespace: str, body: dict[str, Any]) -> None:
    custom.create_namespaced_custom_object(*TR[:2], namespace, TR[2], body)


def get(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return dict(custom.get_namespaced_custom_object(*TR[:2], namespace, TR[2], name))


def status(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return dict(get(custom, namespace, name).get("status") or {})


def patch_spec(
    custom: client.CustomObjectsApi, namespace: str, name: str, spec: dict[str, Any]
) -> None:
    custom.patch_namespaced_custom_object(*TR[:2], namespace, TR[2], name, {"spec": spec})


def wait_status(
    custom: client.CustomObjectsApi,
    namespace: str,
    name: str,
    what: str,
    pred: Any,
    timeout: float = 90,
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        st = status(custom, namespace, name)
        return st if pred(st) else None

    try:
        found: dict[str, Any] = poll(what, check, timeout=timeout)
        return found
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlast status: {status(custom, namespace, name)}") from None


def condition(st: dict[str, Any], ctype: str) -> dict[str, Any]:
    for c in st.get("conditions") or []:
        if c["type"] == ctype:
            return dict(c)
    return {}


def jobs(custom: client.CustomObjectsApi, namespace: str, run: str) -> list[str]:
    items = custom.list_namespaced_custom_object(
        *PYTORCHJOB[:2], namespace, PYTORCHJOB[2], label_selector=f"{LABEL_RUN}={run}"
    )["items"]
    return sorted(j["metadata"]["name"] for j in items)


def pods(core: client.CoreV1Api, namespace: str, run: str, attempt: int) -> list[client.V1Pod]:
    sel = f"{LABEL_RUN}={run},{LABEL_ATTEMPT}={attempt}"
    return [
        p
        for p in core.list_namespaced_pod(namespace, label_selector=sel).items
        if not p.metadata.deletion_timestamp
    ]


def running_gang(
    core: client.CoreV1Api, namespace: str, run: str, attempt: int, n: int = 2, timeout: float = 90
) -> list[client.V1Pod]:
    """The ``n`` Running pods of attempt ``attempt`` (its PyTorchJob is ``<run>-a<N>``)."""
    gang: list[client.V1Pod] = running_pods(core, namespace, f"{run}-a{attempt}", n, timeout)
    return gang


def env(pod: client.V1Pod) -> dict[str, str]:
    c = pod.spec.containers[0]
    return {e.name: e.value for e in c.env or [] if e.value is not None}


def master(ps: list[client.V1Pod]) -> client.V1Pod:
    return next(
        p for p in ps if p.metadata.labels["training.kubeflow.org/replica-type"] == "master"
    )


def complete_all(core: client.CoreV1Api, namespace: str, ps: list[client.V1Pod]) -> None:
    """Every rank exits 0, the master last: once the master has finished, the run has
    succeeded and the operator stops whatever rank still runs (within a watch round trip)."""
    is_master = "training.kubeflow.org/replica-type"
    for p in sorted(ps, key=lambda p: p.metadata.labels.get(is_master) == "master"):
        inject.complete_pod(core, namespace, p.metadata.name)


def event_reasons(core: client.CoreV1Api, namespace: str, name: str) -> list[str]:
    evs = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name},involvedObject.kind=TrainingRun"
    ).items
    evs.sort(key=lambda e: (e.last_timestamp or e.event_time, e.metadata.name))
    return [e.reason for e in evs]


def set_cordon(core: client.CoreV1Api, nodes: list[str], cordoned: bool) -> None:
    for n in nodes:
        core.patch_node(n, {"spec": {"unschedulable": cordoned}})


def spot_nodes(core: client.CoreV1Api) -> list[str]:
    sel = "karpenter.sh/capacity-type=spot,spotrun.dev/fleet=true"
    return sorted(
        n.metadata.name
        for n in core.list_node(label_selector=sel).items
        if not n.metadata.deletion_timestamp
    )


def hold_gpus(core: client.CoreV1Api, namespace: str, nodes: list[str]) -> list[str]:
    """Another workload's pod bound to each of ``nodes``, holding its 8 GPUs: the nodes
    still fit a gang by everything the operator watches (it does not see other workloads'
    pods), but the scheduler places nothing more there. Returns the pods' names; they are
    Running when this returns."""
    names = []
    for node in nodes:
        name = f"gpu-holder-{node}"
        core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": name},
                "spec": {
                    "nodeName": node,
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [
                        {
                            "name": "hold",
                            "image": "holder",
                            "resources": {"limits": {"nvidia.com/gpu": "8"}},
                        }
                    ],
                },
            },
        )
        names.append(name)
    poll(
        "the GPU holders Running",
        lambda: all(
            core.read_namespaced_pod(n, namespace).status.phase == "Running" for n in names
        ),
        timeout=60,
    )
    return names
