"""The warm spares' Deployment ``<run>-spares`` (pure; spec.capacity.warmSpares).

Each replica is a placeholder pod at the lowest priority (PriorityClass spotrun-spare,
below the default 0 of an attempt's pods, never preempting anything itself) that asks for
what one of the run's worker pods asks for, on the nodes a worker may use, one spare per
node. When a gang's pod needs the node, the scheduler preempts the spare; the Deployment
makes a new one, which asks the autoscaler for another node in the background. The spare
runs the run's image, so that image is already on the node when the next attempt lands
there; it waits for SIGTERM and exits 0 (the trainer contract guarantees python in it).
The capacity requests' Deployment ``<run>-capacity`` (decisions.capacity_requests) is made
of the same pods under its own label.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from spotrun_api.spec import TrainingRunSpec
from spotrun_operator.facts.common import (
    LABEL_CAPACITY_FOR,
    LABEL_HOSTNAME,
    LABEL_SPARE_OF,
    SPARE_PRIORITY_CLASS,
    capacity_requests_name,
    run_labels,
    spares_name,
)
from spotrun_operator.model import builders
from spotrun_operator.model.plan import RunRef

Obj = dict[str, Any]
SPARE_CONTAINER = "spare"
# Waits for SIGTERM only (no shell, no sleep binary assumed): the scheduler's preemption
# deletes the pod, and it leaves at once with exit code 0.
SPARE_COMMAND = ("python", "-c", "import signal; signal.sigwait({signal.SIGTERM})")
SPARE_GRACE_SECONDS = 0
# An image pulled for the next attempt's worker only needs a shell (the init-pytorch
# container it serves runs ``sh -c``).
PULL_COMMAND = ("sh", "-c", "exit 0")
PULL_SECURITY: Obj = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
# The fields of a worker's pod spec a spare takes over unchanged: where it may run and
# how its image is pulled and run (the user's podTemplate included).
PLACEMENT_FIELDS = (
    "nodeSelector",
    "tolerations",
    "imagePullSecrets",
    "runtimeClassName",
    "schedulerName",
    "securityContext",
)


def worker_pod_spec(
    ref: RunRef, spec: TrainingRunSpec, capacity_type: str, avoid_nodes: Sequence[str] = ()
) -> Obj:
    """The pod spec an attempt's worker gets on ``capacity_type``, off ``avoid_nodes``."""
    tpl = builders.build_pod_template(
        ref, spec, attempt=0, capacity_type=capacity_type, interval_seconds=0,
        avoid_nodes=avoid_nodes,
    )  # fmt: skip
    pod: Obj = tpl["spec"]
    return pod


def spare_pod_spec(
    ref: RunRef,
    spec: TrainingRunSpec,
    capacity_type: str,
    avoid_nodes: Sequence[str] = (),
    apart_from: Sequence[str] = (LABEL_SPARE_OF,),
) -> Obj:
    """A placeholder's pod spec; one per node among the run's pods labelled with any key of
    ``apart_from``."""
    worker = worker_pod_spec(ref, spec, capacity_type, avoid_nodes)
    trainer = worker["containers"][0]
    container: Obj = {
        "name": SPARE_CONTAINER,
        "image": trainer["image"],
        "command": list(SPARE_COMMAND),
        "resources": trainer.get("resources") or {},
    }
    for key in ("imagePullPolicy", "securityContext"):
        if trainer.get(key) is not None:
            container[key] = trainer[key]
    pod: Obj = {k: worker[k] for k in PLACEMENT_FIELDS if worker.get(k) is not None}
    affinity: Obj = {}
    if (worker.get("affinity") or {}).get("nodeAffinity"):
        affinity["nodeAffinity"] = worker["affinity"]["nodeAffinity"]
    # One spare per node: two on one node would hold one node and bill as two.
    apart = [
        {"labelSelector": {"matchLabels": {key: ref.name}}, "topologyKey": LABEL_HOSTNAME}
        for key in apart_from
    ]
    affinity["podAntiAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": apart}
    pod.update(
        containers=[container],
        affinity=affinity,
        # The class brings priority -10 and preemptionPolicy Never (admission refuses a
        # pod that sets either differently).
        priorityClassName=SPARE_PRIORITY_CLASS,
        terminationGracePeriodSeconds=SPARE_GRACE_SECONDS,
        automountServiceAccountToken=False,
        enableServiceLinks=False,
    )
    return pod


def pull_containers(images: Sequence[str]) -> list[Obj]:
    """One init container per image that exits at once: the kubelet pulls the image onto
    the spare's node before the spare starts (JupyterHub's image puller does the same).
    Each runs as the training operator's restricted init template does (manifests/eks/
    pytorch-init-container.yaml: non-root, nothing allowed) and asks for as little, so a
    restricted namespace admits it and it adds nothing to the spare's request."""
    return [
        {
            "name": f"pull-{i}",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "command": list(PULL_COMMAND),
            "resources": {
                "requests": {"cpu": "10m", "memory": "8Mi"},
                "limits": {"cpu": "100m", "memory": "20Mi"},
            },
            "securityContext": copy.deepcopy(PULL_SECURITY),
        }
        for i, image in enumerate(images)
    ]


def build_spares_deployment(
    ref: RunRef,
    spec: TrainingRunSpec,
    capacity_type: str | None = None,
    pull_images: Sequence[str] = (),
    replicas: int | None = None,
) -> Obj:
    """Deployment ``<run>-spares`` with ``replicas`` (default spec.capacity.warmSpares)
    placeholders, each pulling ``pull_images`` too (:func:`pull_containers`)."""
    pod = spare_pod_spec(ref, spec, capacity_type or spec.capacity.type.value)
    count = spec.capacity.warm_spares if replicas is None else replicas
    return _placeholders(ref, spares_name(ref.name), LABEL_SPARE_OF, pod, count, pull_images)


def build_capacity_requests_deployment(
    ref: RunRef,
    spec: TrainingRunSpec,
    capacity_type: str,
    replicas: int,
    avoid_nodes: Sequence[str] = (),
    pull_images: Sequence[str] = (),
) -> Obj:
    """Deployment ``<run>-capacity`` (decisions.capacity_requests): ``replicas``
    placeholders like the spares, off ``avoid_nodes`` and never on a node that holds
    another placeholder of the run, so that each pending one asks for a node of its own."""
    apart = (LABEL_CAPACITY_FOR, LABEL_SPARE_OF)
    pod = spare_pod_spec(ref, spec, capacity_type, avoid_nodes, apart_from=apart)
    name = capacity_requests_name(ref.name)
    return _placeholders(ref, name, LABEL_CAPACITY_FOR, pod, replicas, pull_images)


def _placeholders(
    ref: RunRef, name: str, key: str, pod: Obj, replicas: int, pull_images: Sequence[str]
) -> Obj:
    """A Deployment ``name`` of ``replicas`` placeholder pods ``pod``, selected by ``key``."""
    if pull_images:
        pod["initContainers"] = pull_containers(pull_images)
    # spotrun.dev/run too: the run's pod watch sees the placeholders (their cost);
    # observation sets them apart by ``key`` (they carry no spotrun.dev/attempt).
    labels = {**run_labels(ref.name), key: ref.name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": ref.namespace,
            "labels": labels,
            "ownerReferences": [builders.owner_reference(ref)],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {key: ref.name}},
            # A new image replaces placeholders one node at a time; never two pods per node.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
            },
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }
