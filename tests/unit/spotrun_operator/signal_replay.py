"""Replay a fixture of tests/fixtures/signals (the real component's writes, in order) on a
pod and node snapshot of a two-node gang, and classify after every write.

The victim is node ``n1`` with the master pod; the worker runs on the healthy ``n2``. Each
write changes the objects the way the apiserver would show them (the same change
vocabulary as hack/spotrun_dev/trace_match.py); Events are not read by the classifier.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller_fakes import SPOT_LABELS, at, gang, ts

from spotrun_dev.trace_match import load_fixture
from spotrun_operator.facts import signals
from spotrun_operator.judging import classify as c

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "signals"
VICTIM = "n1"
GRACE = 30.0  # --node-lost-grace-seconds, the operator's default


def fixture_names() -> list[str]:
    return sorted(p.stem for p in FIXTURES.glob("*.yaml") if not p.stem.startswith("_"))


def _labels(signal: str) -> dict[str, str]:
    """The capacity labels each fixture's precondition names."""
    base = {k: v for k, v in SPOT_LABELS.items() if "capacity" not in k.lower()}
    if signal.startswith("karpenter"):
        return {**base, "karpenter.sh/capacity-type": "spot"}
    if signal == "gke-preempt":
        return {**base, "cloud.google.com/gke-spot": "true"}
    if signal == "aks-evict":
        return {**base, signals.LABEL_AKS_PRIORITY: "spot"}
    return {**base, signals.LABEL_EKS_CAPACITY: "SPOT"}


def _concrete(value: Any) -> Any:
    """A real value for a fixture's ``{regex: ...}`` (ids, timestamps, messages)."""
    if isinstance(value, Mapping) and set(value) == {"regex"}:
        text = re.sub(r"\\S\+|\[[^]]*\][+*{}0-9,]*", "x", str(value["regex"]))
        return text.strip("^$").replace("\\", "")
    return value


def _node(name: str, labels: Mapping[str, str], finalizers: list[str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": dict(labels), "finalizers": finalizers},
        "spec": {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]},
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": ts(-600)}]
        },
    }


@dataclass
class Snapshot:
    """What the apiserver holds (and the operator's watch remembers) at one moment."""

    signal: str
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    gone_nodes: set[str] = field(default_factory=set)
    pods: list[dict[str, Any]] = field(default_factory=list)
    deleted_pods: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, signal: str) -> Snapshot:
        labels = _labels(signal)
        fin = [signals.KARPENTER_TERMINATION_FINALIZER] if signal.startswith("karpenter") else []
        nodes = {n: _node(n, labels, list(fin)) for n in (VICTIM, "n2")}
        return cls(signal, nodes=nodes, pods=gang())

    def uids(self) -> list[str]:
        return sorted(str(p["metadata"]["uid"]) for p in [*self.pods, *self.deleted_pods])

    def victims(self) -> list[dict[str, Any]]:
        return [p for p in self.pods if p["spec"].get("nodeName") == VICTIM]

    def verdict(self, *, watching: bool = True, now: float = 0.0, uids: list[str]) -> c.Verdict:
        """The verdict of an operator that saw every write (``watching``), or of one that
        starts now and knows only what the cluster keeps (and the recorded pod UIDs)."""
        nodes = {
            name: c.node_info(obj, exists=name not in self.gone_nodes)
            for name, obj in self.nodes.items()
            if watching or name not in self.gone_nodes
        }
        return c.classify(
            pods=self.pods,
            nodes=nodes,
            expected=2,
            now=at(now),
            deleted_pods=self.deleted_pods if watching else (),
            known_pod_uids=uids,
            node_lost_grace_seconds=GRACE,
        )


def describe(key: str, value: Any) -> str:
    """``taint_added:<key>`` for taints, the change's key otherwise."""
    return f"{key}:{value['key']}" if isinstance(value, Mapping) and "key" in value else key


def _node_change(node: dict[str, Any], key: str, value: Any) -> bool:
    """Apply one change to the victim node; False when the node was deleted."""
    meta, spec, status = node["metadata"], node["spec"], node["status"]
    if key == "taint_added":
        taint = {k: _concrete(v) for k, v in value.items() if v is not None}
        spec["taints"] = [t for t in spec["taints"] if t != taint] + [taint]
    elif key == "taint_removed":
        spec["taints"] = [t for t in spec["taints"] if t["key"] != value["key"]]
    elif key == "label_added":
        meta["labels"][value["key"]] = _concrete(value["value"])
    elif key == "cordoned":
        spec["unschedulable"] = bool(value)
    elif key == "conditions":
        new = {cd["type"]: {**cd, "lastTransitionTime": ts(0)} for cd in value}
        old = [cd for cd in status["conditions"] if cd["type"] not in new]
        status["conditions"] = old + list(new.values())
    elif key == "node_deleting":
        meta["deletionTimestamp"] = ts(0)
    elif key == "finalizer_removed":
        meta["finalizers"] = [f for f in meta["finalizers"] if f != value]
    elif key == "node_deleted":
        return False
    return True


def _disrupt(status: dict[str, Any], target: Mapping[str, Any]) -> None:
    cond = {"type": "DisruptionTarget", "status": "True"}
    status["conditions"].append({**cond, **{k: _concrete(v) for k, v in target.items()}})


def _pod_change(pod: dict[str, Any], key: str, value: Any) -> bool:
    """Apply one change to a pod on the victim node; False when the pod was deleted."""
    st = pod["status"]
    if key == "disruption_target":
        _disrupt(st, value)
    elif key == "pod_status":
        if value.get("disruptionTarget"):
            _disrupt(st, value["disruptionTarget"])
        st.update({k: _concrete(value[k]) for k in ("phase", "reason", "message") if k in value})
        if "exitCode" in value:
            term = {"exitCode": value["exitCode"], "reason": "Error", "finishedAt": ts(0)}
            st["containerStatuses"][0]["state"] = {"terminated": term}
    elif key == "deletion_started":
        pod["metadata"]["deletionTimestamp"] = ts(0)
    elif key == "pod_phase":
        st["phase"] = value
    elif key == "pod_deleted":
        return False
    return True


def replay(signal: str) -> Iterator[tuple[str, Snapshot]]:
    """Apply the fixture's writes one change at a time; yield (change, snapshot) after each."""
    snap = Snapshot.of(signal)
    for write in load_fixture(FIXTURES / f"{signal}.yaml")["writes"]:
        for change in write["changes"]:
            for key, value in change.items():
                if write["object"] == "node":
                    if not _node_change(snap.nodes[VICTIM], key, value):
                        snap.gone_nodes.add(VICTIM)
                elif write["object"] in ("pod", "pods"):
                    for pod in snap.victims():
                        if not _pod_change(pod, key, value):
                            snap.pods.remove(pod)
                            snap.deleted_pods.append(copy.deepcopy(pod))
                else:
                    continue  # Events: not read by the classifier
                yield describe(key, value), copy.deepcopy(snap)
