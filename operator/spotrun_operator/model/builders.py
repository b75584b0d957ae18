"""Pure builders: TrainingRun -> the children spotrun creates.

Every child has a deterministic name and an owner reference to the run, so creating it
twice is a harmless 409 and deleting the run lets the garbage collector remove it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from spotrun_api import contract
from spotrun_api.naming import job_name
from spotrun_api.spec import TrainingRunSpec as RunSpec
from spotrun_operator.facts.common import (
    API_VERSION,
    CHECKPOINT_VOLUME,
    CONTAINER_NAME,
    EKS_CAPACITY_VALUES,
    GPU_RESOURCE,
    GROUP,
    KIND,
    LABEL_CAPACITY_FOR,
    LABEL_EKS_CAPACITY,
    LABEL_HOSTNAME,
    LABEL_INSTANCE_TYPE,
    LABEL_KARPENTER_CAPACITY,
    LABEL_KUEUE_QUEUE,
    LABEL_RUN,
    LABEL_SPARE_OF,
    PLURAL,
    PROTECTING_ANNOTATIONS,
    PYTORCHJOB_GROUP,
    PYTORCHJOB_KIND,
    PYTORCHJOB_VERSION,
    attempt_labels,
    pvc_name,
    run_labels,
    trainer_sa_name,
)
from spotrun_operator.facts.podtemplate import merge_pod_template
from spotrun_operator.model.plan import RunRef

Obj = dict[str, Any]
GPU_TOLERATION: Obj = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
METRICS_PORT_NAME = "spotrun-metrics"
# Pod Security Standards "restricted" by default (docs/security.md): a non-root uid (the
# spotrun trainer image's user), RuntimeDefault seccomp, no capabilities, no privilege
# escalation. fsGroup makes a volume that supports it (EBS, most CSI block volumes) writable
# by that group; OnRootMismatch skips the recursive chown of a large checkpoint volume
# when its root already has the group. Each field a user sets in spec.podTemplate's pod or
# "pytorch" container securityContext replaces ours (runAsUser for an image of another
# uid, readOnlyRootFilesystem where the image allows it).
TRAINER_UID = 65532
POD_SECURITY_CONTEXT: Obj = {
    "runAsNonRoot": True,
    "runAsUser": TRAINER_UID,
    "runAsGroup": TRAINER_UID,
    "fsGroup": TRAINER_UID,
    "fsGroupChangePolicy": "OnRootMismatch",
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: Obj = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def owner_reference(ref: RunRef) -> Obj:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": ref.name,
        "uid": ref.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(ref: RunRef, name: str, labels: dict[str, str] | None = None) -> Obj:
    return {
        "name": name,
        "namespace": ref.namespace,
        "labels": labels or run_labels(ref.name),
        "ownerReferences": [owner_reference(ref)],
    }


def build_pvc(ref: RunRef, spec: RunSpec) -> Obj | None:
    """The checkpoint PVC when the run asks for a new one (``volume.size``), else None."""
    vol = spec.checkpoint.volume
    if not vol.size:
        return None
    pvc_spec: Obj = {
        "accessModes": [vol.effective_access_mode.value],
        "resources": {"requests": {"storage": vol.size}},
    }
    if vol.storage_class_name:
        pvc_spec["storageClassName"] = vol.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(ref, pvc_name(ref.name)),
        "spec": pvc_spec,
    }


def claim_name(ref: RunRef, spec: RunSpec) -> str:
    return spec.checkpoint.volume.claim_name or pvc_name(ref.name)


def gang_pdb_name(run: str) -> str:
    return f"{run}-gang"


def build_gang_pdb(ref: RunRef, spec: RunSpec) -> Obj:
    """With --train-through-notice: a PodDisruptionBudget that refuses every eviction of
    the run's trainer pods (not its spares or capacity requests), so a drain (NTH's at a
    spot notice) leaves the gang to the operator, which moves it whole. An integer
    minAvailable of the whole gang: the disruption controller then counts the matching
    pods without looking up their controller's scale (PyTorchJob has none), and allows 0."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(ref, gang_pdb_name(ref.name)),
        "spec": {
            "minAvailable": spec.nodes,
            "selector": {
                "matchLabels": {LABEL_RUN: ref.name},
                "matchExpressions": [
                    {"key": LABEL_SPARE_OF, "operator": "DoesNotExist"},
                    {"key": LABEL_CAPACITY_FOR, "operator": "DoesNotExist"},
                ],
            },
        },
    }


def build_service_account(ref: RunRef) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(ref, trainer_sa_name(ref.name)),
    }


def build_role(ref: RunRef) -> Obj:
    """The trainer may read and patch the status of its own run, nothing else."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(ref, trainer_sa_name(ref.name)),
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": [f"{PLURAL}/status"],
                "resourceNames": [ref.name],
                "verbs": ["get", "patch"],
            }
        ],
    }


def build_role_binding(ref: RunRef) -> Obj:
    name = trainer_sa_name(ref.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(ref, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ref.namespace}],
    }


def trainer_env(ref: RunRef, spec: RunSpec, attempt: int, interval_seconds: int) -> list[Obj]:
    """The operator -> trainer contract, as EnvVars (these override any user value)."""
    env = {
        contract.ENV_RUN: ref.name,
        contract.ENV_NAMESPACE: ref.namespace,
        contract.ENV_ATTEMPT: str(attempt),
        contract.ENV_CHECKPOINT_DIR: spec.checkpoint.path,
        contract.ENV_CHECKPOINT_INTERVAL_SECONDS: str(interval_seconds),
        contract.ENV_CHECKPOINT_KEEP: str(spec.checkpoint.keep),
        contract.ENV_METRICS_PORT: str(contract.DEFAULT_METRICS_PORT),
        contract.ENV_TERMINATION_GRACE_SECONDS: str(spec.termination_grace_period_seconds),
        contract.ENV_PROCS_PER_NODE: str(spec.ranks_per_pod),
    }
    if spec.checkpoint.s3_uri:
        env[contract.ENV_S3_URI] = spec.checkpoint.s3_uri
    return [{"name": k, "value": v} for k, v in env.items()]


def capacity_node_terms(
    capacity_type: str, instance_types: Sequence[str], avoid_nodes: Sequence[str]
) -> list[Obj]:
    """Required nodeSelectorTerms: the capacity type (EKS managed node groups or Karpenter
    labels, either suffices), an allowed instance type, and not a node that is going away."""
    common: list[Obj] = [
        {"key": LABEL_INSTANCE_TYPE, "operator": "In", "values": list(instance_types)}
    ]
    if avoid_nodes:
        common.append({"key": LABEL_HOSTNAME, "operator": "NotIn", "values": sorted(avoid_nodes)})
    return [
        {
            "matchExpressions": [
                {
                    "key": LABEL_EKS_CAPACITY,
                    "operator": "In",
                    "values": [EKS_CAPACITY_VALUES[capacity_type]],
                },
                *common,
            ]
        },
        {
            "matchExpressions": [
                {"key": LABEL_KARPENTER_CAPACITY, "operator": "In", "values": [capacity_type]},
                *common,
            ]
        },
    ]


def prefer_not_terms(nodes: Sequence[str]) -> list[Obj]:
    """Preferred scheduling terms steering pods away from ``nodes`` (nodes behind recent
    preemptions that are not going away: the scheduler still uses them when nothing else
    fits, so avoiding them never makes a gang unschedulable)."""
    if not nodes:
        return []
    expr = {"key": LABEL_HOSTNAME, "operator": "NotIn", "values": sorted(nodes)}
    return [{"weight": 100, "preference": {"matchExpressions": [expr]}}]


def build_pod_template(
    ref: RunRef,
    spec: RunSpec,
    *,
    attempt: int,
    capacity_type: str,
    interval_seconds: int,
    avoid_nodes: Sequence[str] = (),
    prefer_not_nodes: Sequence[str] = (),
) -> Obj:
    resources: Obj = spec.resources.model_dump(exclude_none=True)
    if spec.gpus_per_node:
        resources.setdefault("limits", {})[GPU_RESOURCE] = str(spec.gpus_per_node)
    container: Obj = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "command": list(spec.command),
        "args": list(spec.args),
        "imagePullPolicy": spec.image_pull_policy.value if spec.image_pull_policy else None,
        "env": [
            *(e.to_json() for e in spec.env),
            *trainer_env(ref, spec, attempt, interval_seconds),
        ],
        "volumeMounts": [{"name": CHECKPOINT_VOLUME, "mountPath": spec.checkpoint.path}],
        "ports": [{"name": METRICS_PORT_NAME, "containerPort": contract.DEFAULT_METRICS_PORT}],
        "resources": resources,
    }
    volume = {
        "name": CHECKPOINT_VOLUME,
        "persistentVolumeClaim": {"claimName": claim_name(ref, spec)},
    }
    return merge_pod_template(
        spec.pod_template,
        labels=attempt_labels(ref.name, attempt),
        annotations=PROTECTING_ANNOTATIONS if spec.protect_from_voluntary_disruption else None,
        container=container,
        volumes=[volume],
        tolerations=[GPU_TOLERATION] if spec.gpus_per_node else [],
        node_terms=capacity_node_terms(capacity_type, spec.capacity.instance_types, avoid_nodes),
        preferred=prefer_not_terms(prefer_not_nodes),
        pod_security=POD_SECURITY_CONTEXT,
        container_security=CONTAINER_SECURITY_CONTEXT,
        pod_fields={
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
            "serviceAccountName": trainer_sa_name(ref.name),
        },
    )


def build_pytorchjob(
    ref: RunRef,
    spec: RunSpec,
    *,
    attempt: int,
    capacity_type: str,
    interval_seconds: int,
    avoid_nodes: Sequence[str] = (),
    prefer_not_nodes: Sequence[str] = (),
    nodes: int | None = None,
) -> Obj:
    """PyTorchJob ``<run>-a<attempt>``: 1 Master + (nodes-1) Workers, restartPolicy Never.

    ``nodes``: the attempt's size (spec.nodes unless spec.elasticity shrank it); the
    training operator derives WORLD_SIZE and PET_NNODES from these replicas.
    spotrun owns restarts (a lost pod ends the attempt), so the training operator must
    neither restart pods nor clean them up on its own."""
    size = nodes or spec.nodes
    template = build_pod_template(
        ref,
        spec,
        attempt=attempt,
        capacity_type=capacity_type,
        interval_seconds=interval_seconds,
        avoid_nodes=avoid_nodes,
        prefer_not_nodes=prefer_not_nodes,
    )
    replicas: Obj = {
        "Master": {"replicas": 1, "restartPolicy": "Never", "template": template},
    }
    if size > 1:
        replicas["Worker"] = {
            "replicas": size - 1,
            "restartPolicy": "Never",
            "template": template,
        }
    labels = attempt_labels(ref.name, attempt)
    # No backoffLimit: with restartPolicy Never the training operator (v1.9) counts
    # 0 restarts >= a limit of 0 and deletes every pod of the job, logs included.
    run_policy: Obj = {"cleanPodPolicy": "None"}
    if spec.queue_name:
        # Kueue admits the attempt: created suspended (as Kueue's own webhook would make it,
        # jobframework.ApplyDefaultForSuspend), Kueue unsuspends it once admitted.
        labels[LABEL_KUEUE_QUEUE] = spec.queue_name
        run_policy["suspend"] = True
    return {
        "apiVersion": f"{PYTORCHJOB_GROUP}/{PYTORCHJOB_VERSION}",
        "kind": PYTORCHJOB_KIND,
        "metadata": _meta(ref, job_name(ref.name, attempt), labels),
        "spec": {
            # PET_NPROC_PER_NODE and WORLD_SIZE (nodes x procs) for a plain torchrun command;
            # the spotrun trainer reads SPOTRUN_PROCS_PER_NODE (the same number).
            "nprocPerNode": str(spec.ranks_per_pod),
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": replicas,
        },
    }


def job_nodes(job: Mapping[str, Any]) -> int | None:
    """The nodes a PyTorchJob asks for (its Master and Worker replicas); None if unreadable."""
    specs = (job.get("spec") or {}).get("pytorchReplicaSpecs") or {}
    try:
        total = sum(int((r or {}).get("replicas", 1)) for r in specs.values())
    except (TypeError, ValueError, AttributeError):
        return None
    return total or None


def referenced_objects(spec: RunSpec, ref: RunRef) -> list[tuple[str, str]]:
    """(kind, name) of the Secrets, ConfigMaps and PVCs the pods cannot start without.

    Checked before each attempt: a missing one is a configuration error with a clear
    message instead of pods stuck in ContainerCreating."""
    refs: list[tuple[str, str]] = []
    if spec.checkpoint.volume.claim_name:
        refs.append(("PersistentVolumeClaim", spec.checkpoint.volume.claim_name))
    pod = spec.pod_template.get("spec") or {}
    for vol in pod.get("volumes") or []:
        if (vol.get("secret") or {}).get("secretName") and not vol["secret"].get("optional"):
            refs.append(("Secret", vol["secret"]["secretName"]))
        if (vol.get("configMap") or {}).get("name") and not vol["configMap"].get("optional"):
            refs.append(("ConfigMap", vol["configMap"]["name"]))
        if (vol.get("persistentVolumeClaim") or {}).get("claimName"):
            refs.append(("PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"]))
    envs: list[Any] = [e.to_json() for e in spec.env]
    env_from: list[Any] = []
    for c in list(pod.get("containers") or []) + list(pod.get("initContainers") or []):
        envs.extend(c.get("env") or [])
        env_from.extend(c.get("envFrom") or [])
    for e in envs:
        src = e.get("valueFrom") or {}
        for key, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
            sel = src.get(key) or {}
            if sel.get("name") and not sel.get("optional"):
                refs.append((kind, sel["name"]))
    for ef in env_from:
        for key, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
            sel = ef.get(key) or {}
            if sel.get("name") and not sel.get("optional"):
                refs.append((kind, sel["name"]))
    return sorted(set(refs))
