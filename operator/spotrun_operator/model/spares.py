"""The warm spares' Deployment ``<run>-spares`` (pure; spec.capacity.warmSpares).

Each replica is a placeholder pod at the lowest priority (PriorityClass spotrun-spare,
below the default 0 of an attempt's pods, never preempting anything itself) that asks for
what one of the run's worker pods asks for, on the nodes a worker may use, one spare per
node. When a gang's pod needs the node, the scheduler preempts the spare; the Deployment
makes a new one, which asks the autoscaler for another node in the background. The spare
runs the run's image, so that image is already on the node when the next attempt lands
there; it waits for SIGTERM and exits 0 (the trainer contract guarantees python in it).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from spotrun_api.spec import TrainingRunSpec
from spotrun_operator.facts.common import (
    LABEL_HOSTNAME,
    LABEL_SPARE_OF,
    SPARE_PRIORITY_CLASS,
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


def spare_labels(run: str) -> dict[str, str]:
    """spotrun.dev/run too: the run's pod watch sees the spares (their cost); observation
    sets them apart by spotrun.dev/spare-of (they carry no spotrun.dev/attempt)."""
    return {**run_labels(run), LABEL_SPARE_OF: run}


def worker_pod_spec(ref: RunRef, spec: TrainingRunSpec, capacity_type: str) -> Obj:
    """The pod spec an attempt's worker gets on ``capacity_type`` (no nodes avoided)."""
    tpl = builders.build_pod_template(
        ref, spec, attempt=0, capacity_type=capacity_type, interval_seconds=0
    )
    pod: Obj = tpl["spec"]
    return pod


def spare_pod_spec(ref: RunRef, spec: TrainingRunSpec, capacity_type: str) -> Obj:
    worker = worker_pod_spec(ref, spec, capacity_type)
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
    apart = {"labelSelector": {"matchLabels": {LABEL_SPARE_OF: ref.name}}}
    affinity["podAntiAffinity"] = {
        "requiredDuringSchedulingIgnoredDuringExecution": [{**apart, "topologyKey": LABEL_HOSTNAME}]
    }
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
    if pull_images:
        pod["initContainers"] = pull_containers(pull_images)
    labels = spare_labels(ref.name)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": spares_name(ref.name),
            "namespace": ref.namespace,
            "labels": labels,
            "ownerReferences": [builders.owner_reference(ref)],
        },
        "spec": {
            "replicas": spec.capacity.warm_spares if replicas is None else replicas,
            "selector": {"matchLabels": {LABEL_SPARE_OF: ref.name}},
            # A new image replaces spares one node at a time; never two pods per spare.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": pod,
            },
        },
    }
