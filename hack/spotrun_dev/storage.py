"""Checkpoint volumes on the local cluster.

kwok nodes have no CSI driver and the cluster has no provisioner, so a TrainingRun there
uses an existing claim (``spec.checkpoint.volume.claimName``) pre-bound to a hostPath
ReadWriteMany PersistentVolume — the shape of an EFS/FSx volume shared by the whole gang.
"""

from __future__ import annotations

import os
from pathlib import Path

from kubernetes import client
from kubernetes.client.rest import ApiException

from spotrun_dev.cluster import wait_for

LOCAL_ROOT = Path("/tmp/spotrun-local")
# The uid and gid trainer pods run as (the operator's default pod securityContext and the
# trainer image's user): the owner of every checkpoint folder here.
TRAINER_UID = TRAINER_GID = 65532


def host_path(namespace: str, name: str) -> Path:
    """The shared folder behind claim ``namespace/name`` (every real node mounts it)."""
    return LOCAL_ROOT / namespace / name


def ensure_checkpoint_claim(core: client.CoreV1Api, namespace: str, name: str = "ckpt") -> str:
    """A Bound RWX claim ``name`` in ``namespace``; returns the PV's name (delete it after).

    Trainer pods run as uid 65532 (non-root, restricted Pod Security). The kubelet applies
    a pod's ``fsGroup`` to volumes that support ownership management, never to hostPath,
    so the folder is made the trainer's here: this stands in for what an EFS access point
    (its POSIX user and root directory owner) or an FSx/NFS export prepared for a training
    team does on EKS (docs/security.md)."""
    pv = f"{name}-{namespace}"
    folder = host_path(namespace, name)
    folder.mkdir(parents=True, exist_ok=True)
    os.chown(folder, TRAINER_UID, TRAINER_GID)
    folder.chmod(0o775)
    _ensure_volume(core, pv, folder, namespace, name)
    try:
        core.create_namespaced_persistent_volume_claim(
            namespace,
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": name},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "volumeName": pv,
                    "resources": {"requests": {"storage": "10Gi"}},
                },
            },
        )
    except ApiException as exc:
        if exc.status != 409:
            raise
    wait_for(
        f"claim {namespace}/{name} to be Bound",
        lambda: (
            core.read_namespaced_persistent_volume_claim(name, namespace).status.phase == "Bound"
        ),
        timeout=60,
    )
    return pv


def _ensure_volume(
    core: client.CoreV1Api, pv: str, folder: Path, namespace: str, name: str
) -> None:
    """The hostPath PV ``pv`` on ``folder``, reserved for claim ``namespace/name``."""
    try:
        core.create_persistent_volume(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": pv, "labels": {"spotrun.dev/local": "true"}},
                "spec": {
                    "capacity": {"storage": "10Gi"},
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": str(folder)},
                    "claimRef": {"namespace": namespace, "name": name},
                },
            }
        )
    except ApiException as exc:
        if exc.status != 409:
            raise
        # Left Released by an earlier claim of the same name (a recreated namespace): free
        # it for the new claim, as an admin does, by dropping the old claim's uid.
        if core.read_persistent_volume(pv).status.phase == "Released":
            core.patch_persistent_volume(
                pv, {"spec": {"claimRef": {"uid": None, "resourceVersion": None}}}
            )


def delete_volume(core: client.CoreV1Api, pv: str) -> None:
    try:
        core.delete_persistent_volume(pv)
    except ApiException as exc:
        if exc.status != 404:
            raise
