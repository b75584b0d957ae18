"""Watch-fed caches of everything a reconcile reads: controller-runtime's informer cache.

kopf's index handlers feed these stores (:mod:`handlers`), and kopf starts no other
handler before every index has seen its resource's initial listing: the first reconcile
after a (re)start therefore decides on a complete cache, and a reconcile in steady state
makes no GET or LIST call at all (``observe`` reads :class:`CachedReads`).

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
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from spotrun_operator.apiserver import pod_create_refusal
from spotrun_operator.common import (
    LABEL_KUEUE_JOB_UID,
    LABEL_RUN,
    PYTORCHJOB_KIND,
    parse_job_name,
)
from spotrun_operator.plan import Rejected
from spotrun_operator.trim import trimmed, trimmed_claim, trimmed_job, trimmed_node, trimmed_pod

Obj = dict[str, Any]
V = TypeVar("V")
Key = tuple[str, str]  # (namespace or "", name)
IndexKey = tuple[str, str]  # (namespace, label value)

CLAIM_KIND = "PersistentVolumeClaim"
# How long a deleted object's tombstone outlives it (late watch events arrive in ms).
TOMBSTONE_SECONDS = 600.0


def _version(obj: Mapping[str, Any]) -> int | None:
    rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    return int(rv) if rv.isdigit() else None


def _uid(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def _drop_oldest_while(entries: dict[Any, V], expired: Callable[[V], bool]) -> None:
    """Drop entries of an insertion-ordered dict from its oldest on, while ``expired``
    says so (entries go in in time order, so the first one kept ends the pass)."""
    while entries:
        oldest = next(iter(entries))
        if not expired(entries[oldest]):
            return
        del entries[oldest]


def _key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name"))


class Store:
    """The newest known state of each object of one kind, with an optional index by a
    label's value (the run's name, a Kueue job UID). Safe to share between the event loop
    (writer) and reconcile threads (readers)."""

    def __init__(
        self,
        kind: str,
        index_label: str | None = None,
        transform: Callable[[Mapping[str, Any]], Obj] = trimmed,
        clock: Callable[[], float] = time.monotonic,
        index_by: Callable[[Mapping[str, Any]], str | None] | None = None,
    ) -> None:
        self.kind = kind
        self._clock = clock
        # One index mechanism: a label's value is one way to say what an object is filed by.
        self._index_by = index_by or (_label_value(index_label) if index_label else None)
        self._transform = transform
        self._lock = threading.Lock()
        self._objs: dict[Key, Obj] = {}
        self._index: dict[IndexKey, set[Key]] = {}
        # key -> (when, the version and the UID of the deleted object)
        self._tombstones: dict[Key, tuple[float, int, str]] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._objs)

    def put(self, obj: Mapping[str, Any]) -> bool:
        """Keep ``obj`` unless what is known is newer; True when kept."""
        key, version = _key(obj), _version(obj)
        with self._lock:
            if version is not None and not self._newer(key, version, _uid(obj)):
                return False
            self._tombstones.pop(key, None)
            old = self._objs.get(key)
            if old is not None:
                self._unindex(key, old)
            self._objs[key] = self._transform(obj)
            self._reindex(key, obj)
        return True

    def delete(self, obj: Mapping[str, Any]) -> None:
        """``obj`` is gone (its last state, as a DELETED event or a DELETE answer says)."""
        key, version = _key(obj), _version(obj)
        with self._lock:
            if version is not None and not self._newer(key, version, _uid(obj)):
                return
            self._bury(key, version or 0, _uid(obj))

    def forget(self, namespace: str, name: str, uid: str) -> None:
        """The object ``uid`` is gone, known without its last state (a DELETE answered
        with a Status): every event of that object still on its way is old news."""
        key = (namespace, name)
        with self._lock:
            old = self._objs.get(key)
            if old is not None and _uid(old) not in ("", uid):
                return  # a newer object of the same name is already known
            known = _version(old) if old is not None else None
            self._bury(key, known or 0, uid)

    def _bury(self, key: Key, version: int, uid: str) -> None:
        old = self._objs.pop(key, None)
        if old is not None:
            self._unindex(key, old)
        now = self._clock()
        # Re-inserted at the end, so the dict stays in burial order and expiry looks only
        # at its oldest entries (a scan of every tombstone per deletion was O(n^2) in a
        # storm: py-spy, operator_scale at 1,100 runs).
        self._tombstones.pop(key, None)
        self._tombstones[key] = (now, version, uid or (_uid(old) if old is not None else ""))
        _drop_oldest_while(self._tombstones, lambda t: now - t[0] > TOMBSTONE_SECONDS)

    def get(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self._objs.get((namespace, name))

    def as_kept(self, obj: Mapping[str, Any]) -> Obj:
        """``obj`` as this store keeps it: the stored object itself when the store holds
        this very version (kopf runs the index handlers before the event handlers), so
        what else remembers it shares the kept copy and its shared strings rather than
        the watch event's; a transformed copy otherwise (a deleted object, or a newer
        version from the operator's own write)."""
        key = _key(obj)
        kept = self.get(*key)
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kept is not None and kept["metadata"].get("resourceVersion") == version:
            return kept
        return self._transform(obj)

    def indexed(self, namespace: str, value: str) -> list[Obj]:
        """Objects in ``namespace`` whose index label has ``value``."""
        with self._lock:
            keys = self._index.get((namespace, value), set())
            return [self._objs[k] for k in sorted(keys)]

    def _newer(self, key: Key, version: int, uid: str) -> bool:
        old = self._objs.get(key)
        if old is not None:
            known = _version(old)
            return known is None or version >= known
        if key in self._tombstones:
            # The deleted object's own states (watch events that arrive after the DELETE's
            # answer) are no news: only another object (UID), or a newer version, is.
            _, buried, buried_uid = self._tombstones[key]
            if uid and buried_uid:
                return uid != buried_uid
            return version > buried
        return True

    def _label(self, obj: Mapping[str, Any]) -> str | None:
        return self._index_by(obj) if self._index_by is not None else None

    def _reindex(self, key: Key, obj: Mapping[str, Any]) -> None:
        value = self._label(obj)
        if value is not None:
            self._index.setdefault((key[0], value), set()).add(key)

    def _unindex(self, key: Key, obj: Mapping[str, Any]) -> None:
        value = self._label(obj)
        if value is None:
            return
        keys = self._index.get((key[0], value))
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._index[(key[0], value)]


class Cache:
    """The stores of every kind a reconcile reads, and whether kopf has filled them."""

    def __init__(self) -> None:
        self.runs = Store("TrainingRun")
        self.jobs = Store("PyTorchJob", index_label=LABEL_RUN, transform=trimmed_job)
        self.pods = Store("Pod", index_label=LABEL_RUN, transform=trimmed_pod)
        self.nodes = Store("Node", transform=trimmed_node)
        self.workloads = Store("Workload", index_label=LABEL_KUEUE_JOB_UID)
        # Whether a claim a run references exists (its metadata only).
        self.claims = Store(CLAIM_KIND, transform=trimmed_claim)
        # The training operator's FailedCreatePod events, by the UID of their PyTorchJob
        # (the watch asks the apiserver for those alone: handlers.SERVER_FIELD_SELECTORS).
        self.refusals = Store("Event", index_by=_involved_job_uid)
        self.synced = threading.Event()

    def jobs_owning(self, event: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(namespace, run) of the cached PyTorchJob an Event is about, if any."""
        involved = event.get("involvedObject") or {}
        job = self.jobs.get(str(involved.get("namespace") or ""), str(involved.get("name")))
        if job is None or _uid(job) != involved.get("uid"):
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


def _label_value(label: str) -> Callable[[Mapping[str, Any]], str | None]:
    def value(obj: Mapping[str, Any]) -> str | None:
        found = ((obj.get("metadata") or {}).get("labels") or {}).get(label)
        return str(found) if found is not None else None

    return value


def _involved_job_uid(event: Mapping[str, Any]) -> str | None:
    involved = event.get("involvedObject") or {}
    if involved.get("kind") != PYTORCHJOB_KIND or not involved.get("uid"):
        return None
    return str(involved["uid"])


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
        return owned_jobs(self.cache.jobs.indexed(namespace, run), run, owner_uid)

    def list_pods(self, namespace: str, run: str) -> list[Obj]:
        return self.cache.pods.indexed(namespace, run)

    def get_node(self, name: str) -> Obj | None:
        return self.cache.nodes.get("", name)

    def get_workload(self, namespace: str, job_uid: str) -> Obj | None:
        found = self.cache.workloads.indexed(namespace, job_uid)
        return found[0] if found else None

    def pod_refusal(self, namespace: str, job: Mapping[str, Any]) -> Rejected | None:
        """Why the training operator could not create a pod of ``job``, when the apiserver
        judged the pod itself: its FailedCreatePod events on this very job."""
        uid = _uid(job)
        return pod_create_refusal(self.cache.refusals.indexed(namespace, uid)) if uid else None

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
