"""Watch-fed caches of everything a reconcile reads: controller-runtime's informer cache.

kopf's event handlers feed these stores (:mod:`handlers`), and each store knows when it
holds every object its resource had when the operator started (client-go's
``HasSynced``, :mod:`initial_sync`): no reconcile runs before every store is synced, so
the first decision after a (re)start is made on a complete cache, and a reconcile in
steady state makes no GET or LIST call at all (``observe`` reads :class:`CachedReads`).

The operator's own successful writes go in too (client-go's ``MutationCache``): a status
patch, a created PyTorchJob or a deleted pod is seen by the very next reconcile, before
the watch event comes back. An object is only replaced by a newer resourceVersion. Like
client-go's ``NewIntegerResourceVersionMutationCache``, this compares resourceVersions as
integers (etcd revisions, which is what the kube-apiserver gives); a version that is not
an integer is never judged older. A deleted object leaves a tombstone with the version
and UID of its deletion, so a late event from before the deletion cannot bring it back.
Staleness left over is handled the controller way: status writes carry the
resourceVersion read (a compare-and-swap), and a conflict means "look again".
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

from spotrun_api.enums import ConditionType
from spotrun_api.naming import parse_job_name
from spotrun_operator.facts.common import (
    LABEL_KUEUE_JOB_UID,
    LABEL_RUN,
    PYTORCHJOB_KIND,
)
from spotrun_operator.model.plan import Rejected
from spotrun_operator.watching.refusals import pod_create_refusal
from spotrun_operator.watching.store import Indexer, IndexKey, Obj, Store, uid_of
from spotrun_operator.watching.trim import (
    trimmed_claim,
    trimmed_job,
    trimmed_node,
    trimmed_pod,
)

# The stores' indexes, by name.
BY_RUN = "run"  # (namespace, the run's label)
BY_NODE = "node"  # ("", spec.nodeName) of a pod
BY_JOB = "job"  # (namespace, a PyTorchJob's UID) of a Kueue Workload or a refusal
BY_WAIT = "wait"  # ("", "capacity") of a run whose CapacityAvailable condition is False

CLAIM_KIND = "PersistentVolumeClaim"


class Cache:
    """The stores of every kind a reconcile reads, and whether they are all synced."""

    def __init__(self) -> None:
        by_run = {BY_RUN: by_label(LABEL_RUN)}
        # By capacity wait too: the runs a node that joins or becomes schedulable wakes.
        self.runs = Store("TrainingRun", indexes={BY_WAIT: _waiting_for_capacity})
        self.jobs = Store("PyTorchJob", transform=trimmed_job, indexes=by_run)
        # By node too: the runs to wake when a node is tainted, lost or deleted.
        self.pods = Store("Pod", transform=trimmed_pod, indexes={**by_run, BY_NODE: _pod_node})
        self.nodes = Store("Node", transform=trimmed_node)
        self.workloads = Store("Workload", indexes={BY_JOB: by_label(LABEL_KUEUE_JOB_UID)})
        # Whether a claim a run references exists (its metadata only).
        self.claims = Store(CLAIM_KIND, transform=trimmed_claim)
        # The training operator's FailedCreatePod events, by the UID of their PyTorchJob
        # (the watch asks the apiserver for those alone: handlers.SERVER_FIELD_SELECTORS).
        self.refusals = Store("Event", indexes={BY_JOB: _involved_job_uid})
        # Set once every store is synced (initial_sync); never cleared.
        self.synced = threading.Event()

    def all_stores(self) -> tuple[Store, ...]:
        return (
            self.runs, self.jobs, self.pods, self.nodes, self.workloads, self.claims,
            self.refusals,
        )  # fmt: skip

    def runs_on(self, node: str) -> set[tuple[str, str]]:
        """(namespace, run) of every cached pod of a run bound to ``node``."""
        return {
            (str(p["metadata"]["namespace"]), str(p["metadata"]["labels"][LABEL_RUN]))
            for p in self.pods.indexed(BY_NODE, "", node)
        }

    def runs_waiting_for_capacity(self) -> set[tuple[str, str]]:
        """(namespace, run) of every cached run whose ``CapacityAvailable`` is False: its
        next attempt waits until its gang can be placed (``outcomes.create_when_placeable``)
        or its pods are unschedulable."""
        return {
            (str(r["metadata"]["namespace"]), str(r["metadata"]["name"]))
            for r in self.runs.indexed(BY_WAIT, "", WAITING)
        }

    def jobs_owning(self, event: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(namespace, run) of the cached PyTorchJob an Event is about, if any."""
        involved = event.get("involvedObject") or {}
        job = self.jobs.get(str(involved.get("namespace") or ""), str(involved.get("name")))
        if job is None or uid_of(job) != involved.get("uid"):
            return []
        run = (job["metadata"].get("labels") or {}).get(LABEL_RUN)
        return [(str(job["metadata"]["namespace"]), str(run))] if run else []

    def store(self, kind: str) -> Store | None:
        return {
            s.kind: s
            for s in (self.runs, self.jobs, self.pods, self.nodes, self.workloads, self.claims)
        }.get(kind)

    def wrote(self, obj: Mapping[str, Any]) -> None:
        """The apiserver's answer to one of the operator's own writes (create, patch)."""
        store = self.store(str(obj.get("kind")))
        if store is not None:
            store.put(obj)

    def removed(self, obj: Mapping[str, Any]) -> None:
        """The apiserver's answer to a DELETE: the object's last state. A pod deleted
        gracefully still exists (with deletionTimestamp); anything else is gone."""
        store = self.store(str(obj.get("kind")))
        if store is None:
            return
        meta = obj.get("metadata") or {}
        if meta.get("deletionTimestamp") and not _deleted_for_good(obj):
            store.put(obj)
        else:
            store.delete(obj)

    def deleted(self, kind: str, namespace: str, name: str, uid: str) -> None:
        """A DELETE answered with a Status of success: the object is gone for good. A
        custom resource's DELETE answers so (the generic registry's finalizeDelete returns
        the object only where ReturnDeletedObject is set, which the CRD store does not)."""
        store = self.store(kind)
        if store is not None:
            store.forget(namespace, name, uid)

    def sizes(self) -> dict[str, int]:
        kept = (self.runs, self.jobs, self.pods, self.nodes, self.claims)
        return {s.kind: len(s) for s in kept}


def by_label(label: str) -> Indexer:
    """Files an object under (its namespace, the value of its ``label``)."""

    def filed_at(obj: Mapping[str, Any]) -> IndexKey | None:
        meta = obj.get("metadata") or {}
        found = (meta.get("labels") or {}).get(label)
        return (str(meta.get("namespace") or ""), str(found)) if found is not None else None

    return filed_at


WAITING: Final = "capacity"


def _waiting_for_capacity(run: Mapping[str, Any]) -> IndexKey | None:
    conditions = (run.get("status") or {}).get("conditions") or []
    waiting = any(
        c.get("type") == ConditionType.CAPACITY_AVAILABLE.value and c.get("status") == "False"
        for c in conditions
    )
    return ("", WAITING) if waiting else None


def _pod_node(pod: Mapping[str, Any]) -> IndexKey | None:
    node = (pod.get("spec") or {}).get("nodeName")
    return ("", str(node)) if node else None


def _involved_job_uid(event: Mapping[str, Any]) -> IndexKey | None:
    involved = event.get("involvedObject") or {}
    if involved.get("kind") != PYTORCHJOB_KIND or not involved.get("uid"):
        return None
    namespace = str((event.get("metadata") or {}).get("namespace") or "")
    return namespace, str(involved["uid"])


def _deleted_for_good(obj: Mapping[str, Any]) -> bool:
    """A DELETE answer is the object's final state when nothing holds it (no finalizers
    and, for a pod, a zero grace period)."""
    meta = obj.get("metadata") or {}
    if meta.get("finalizers"):
        return False
    return str(obj.get("kind")) != "Pod" or meta.get("deletionGracePeriodSeconds") == 0


class ApiReads(Protocol):
    """The reads no watch of the operator covers (implemented by ``kube.Kube``)."""

    def missing(self, namespace: str, refs: Sequence[tuple[str, str]]) -> list[str]: ...


class CachedReads:
    """``observe``'s reads, answered from the caches. Only what no watch covers goes to
    the API, and ``observe`` asks for it only when a decision needs it: the referenced
    Secrets and ConfigMaps before an attempt is created. (Watching those would need list
    and watch on every Secret of the namespace: far more than a metadata-only GET of the
    ones a run names. Claims are watched: their existence is all the cache keeps.)"""

    def __init__(self, cache: Cache, api: ApiReads) -> None:
        self.cache = cache
        self.api = api

    def list_jobs(self, namespace: str, run: str, owner_uid: str) -> dict[int, Obj]:
        return owned_jobs(self.cache.jobs.indexed(BY_RUN, namespace, run), run, owner_uid)

    def list_pods(self, namespace: str, run: str) -> list[Obj]:
        return self.cache.pods.indexed(BY_RUN, namespace, run)

    def get_node(self, name: str) -> Obj | None:
        return self.cache.nodes.get("", name)

    def get_workload(self, namespace: str, job_uid: str) -> Obj | None:
        found = self.cache.workloads.indexed(BY_JOB, namespace, job_uid)
        return found[0] if found else None

    def pod_refusal(self, namespace: str, job: Mapping[str, Any]) -> Rejected | None:
        """Why the training operator could not create a pod of ``job``, when the apiserver
        judged the pod itself: its FailedCreatePod events on this very job."""
        uid = uid_of(job)
        refusals = self.cache.refusals.indexed(BY_JOB, namespace, uid) if uid else []
        return pod_create_refusal(refusals)

    def missing(self, namespace: str, refs: Sequence[tuple[str, str]]) -> list[str]:
        """``"Kind name"`` of each referenced object that does not exist, in ``refs``'
        order: claims from the cache, the others from the API."""
        asked = [r for r in refs if r[0] != CLAIM_KIND]
        absent = set(self.api.missing(namespace, asked)) if asked else set()

        def gone(kind: str, name: str) -> bool:
            if kind == CLAIM_KIND:
                return self.cache.claims.get(namespace, name) is None
            return f"{kind} {name}" in absent

        return [f"{kind} {name}" for kind, name in refs if gone(kind, name)]


def owned_jobs(jobs: Sequence[Mapping[str, Any]], run: str, owner_uid: str) -> dict[int, Obj]:
    """The run's PyTorchJobs by attempt number (only those this run owns: a job of an
    earlier run with the same name may still be on its way out)."""
    by_attempt: dict[int, Obj] = {}
    for job in jobs:
        owners = (job.get("metadata") or {}).get("ownerReferences") or []
        if not any(o.get("uid") == owner_uid for o in owners):
            continue
        n = parse_job_name(run, str(job["metadata"]["name"]))
        if n is not None:
            by_attempt[n] = dict(job)
    return by_attempt
