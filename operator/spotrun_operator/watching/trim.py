"""What the watch caches keep of each object (controller-runtime's cache transforms).

The operator keeps every TrainingRun, PyTorchJob, pod and node it watches, so its memory
grows with the fleet. Two things make a kept object cheaper than the parsed watch event:

- **Only what decisions read.** Client bookkeeping (``managedFields``, kubectl's
  last-applied copy of the spec: controller-runtime's ``TransformStripManagedFields``) and,
  per kind, the parts no decision reads: a pod's containers and volumes, a node's images
  and system info, a PyTorchJob's pod templates (``cache.Options.ByObject`` transforms).
- **One copy of each repeated string.** Every parsed event brings its own copies of the
  same keys (``lastTransitionTime``, ``topology.kubernetes.io/zone``) and values
  (``True``, ``p4d.24xlarge``, a zone): with 1,100 runs on 1,500 nodes those copies were
  half of what the stores held. :class:`Strings` hands out one shared copy instead, like
  the string interning of Go's JSON decoders for Kubernetes objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

Obj = dict[str, Any]

LAST_APPLIED: Final = "kubectl.kubernetes.io/last-applied-configuration"

# Of a pod's spec a decision reads only where it runs (``nodeName``); its containers, env,
# volumes and tolerations, most of a pod's bytes, are the PyTorchJob's and the template's.
POD_SPEC_KEPT: tuple[str, ...] = ("nodeName",)

# Of a node's status a decision reads its Ready condition and the GPUs it offers
# (``signals.node_info``); the other conditions (pressure, network), image list,
# addresses and system info (tens of KB on a GPU node with many images) are not kept.
NODE_STATUS_KEPT: tuple[str, ...] = ("conditions", "allocatable")
NODE_CONDITIONS_KEPT: tuple[str, ...] = ("Ready",)

# Of a PyTorchJob a decision reads its metadata, status, ``runPolicy`` (suspend) and the
# size of each replica type (``builders.job_nodes``); the pod template, most of a job's
# bytes (~16 KB as Python objects for one node, ~26 KB for four), is the operator's own
# build and is never read back.
JOB_REPLICA_KEPT: tuple[str, ...] = ("replicas", "restartPolicy")

# Values that differ in (almost) every object or version: sharing them saves nothing and
# would fill the table. Keys ending in Time or Timestamp are skipped too.
UNIQUE_VALUE_KEYS: frozenset[str] = frozenset(
    {"uid", "resourceVersion", "containerID", "imageID", "podIP", "hostIP", "ip", "message"}
)
_TIME_SUFFIXES: Final = ("Time", "Timestamp")


class Strings:
    """One shared copy of each short string seen in kept objects.

    The table is bounded: past ``max_entries`` it starts again empty (what is already
    kept keeps its copies; only later objects share less until the table fills again), so
    a stream of new names cannot grow it without end. Safe between threads: a lookup is
    one ``dict.setdefault``, atomic in CPython."""

    MAX_LENGTH: Final = 64  # longer strings (messages, JSON in annotations) rarely repeat

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._table: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, s: object) -> bool:
        return s in self._table

    def one(self, s: str) -> str:
        """The shared copy of ``s``."""
        if len(self._table) >= self.max_entries:
            self._table.clear()
        return self._table.setdefault(s, s)

    def copy(self, value: Any, key: str = "") -> Any:
        """A copy of the JSON-like ``value`` (dicts, lists, scalars) that shares every
        repeated key and short value; ``key`` is the dict key ``value`` was found under."""
        if isinstance(value, str):
            if len(value) > self.MAX_LENGTH or key in UNIQUE_VALUE_KEYS:
                return value
            return value if key.endswith(_TIME_SUFFIXES) else self.one(value)
        # JSON from the API: plain dicts and lists (a kopf Body is copied to a dict first;
        # isinstance against the Mapping ABC costs several times more per value).
        if isinstance(value, dict):
            return {self.one(str(k)): self.copy(v, str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.copy(v, key) for v in value]
        return value


# One table for every store: label keys, zones and condition types repeat across kinds.
STRINGS: Final = Strings()


def trimmed(obj: Mapping[str, Any]) -> Obj:
    """``obj`` without client bookkeeping, its strings shared (a new object; ``obj`` is
    left as it was)."""
    stored = dict(obj)
    meta = dict(stored.get("metadata") or {})
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations and LAST_APPLIED in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    stored["metadata"] = meta
    copied: Obj = STRINGS.copy(stored)
    return copied


def trimmed_claim(obj: Mapping[str, Any]) -> Obj:
    """A PersistentVolumeClaim as the operator keeps it: whether it exists is all a
    decision reads (``CachedReads.missing``), so only its metadata."""
    return trimmed({"kind": obj.get("kind"), "metadata": obj.get("metadata") or {}})


def trimmed_pod(obj: Mapping[str, Any]) -> Obj:
    """A pod as the operator keeps it: only the spec it reads."""
    return trimmed(_keeping(obj, "spec", POD_SPEC_KEPT))


def trimmed_node(obj: Mapping[str, Any]) -> Obj:
    """A node as the operator keeps it: only its Ready condition and allocatable."""
    node = _keeping(obj, "status", NODE_STATUS_KEPT)
    status = node.get("status")
    if status and status.get("conditions"):
        status["conditions"] = [
            c for c in status["conditions"] if c.get("type") in NODE_CONDITIONS_KEPT
        ]
    return trimmed(node)


def trimmed_job(obj: Mapping[str, Any]) -> Obj:
    """A PyTorchJob as the operator keeps it: no pod templates."""
    job = dict(obj)
    spec = job.get("spec")
    if spec:
        spec = dict(spec)
        replicas = spec.get("pytorchReplicaSpecs")
        if isinstance(replicas, Mapping):
            spec["pytorchReplicaSpecs"] = {
                rtype: {k: r[k] for k in JOB_REPLICA_KEPT if k in r}
                if isinstance(r, Mapping)
                else r
                for rtype, r in replicas.items()
            }
        job["spec"] = spec
    return trimmed(job)


def _keeping(obj: Mapping[str, Any], section: str, keys: tuple[str, ...]) -> Obj:
    """A shallow copy of ``obj`` with only ``keys`` of its ``section`` (an absent or
    empty one stays)."""
    kept = dict(obj)
    part = kept.get(section)
    if part:
        kept[section] = {k: part[k] for k in keys if k in part}
    return kept
