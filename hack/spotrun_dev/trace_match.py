"""Compare traces with the fixtures transcribed from the real components (pure).

A fixture (tests/fixtures/signals/<name>.yaml) lists, in order, the writes a component
makes, each with a ``source:`` citation. A fixture value may be ``{regex: ...}`` where the
real value is generated (an event id, a timestamp). Two comparisons:

- ``plan_mismatches``: a spotrun-dev plan against the fixture's writes that spotrun-dev
  plays (``observed: true`` writes are the local cluster's own components).
- ``node_changes`` / ``pod_changes`` + ``order_mismatches``: what the apiserver's watch
  showed, turned back into the same change vocabulary, against the fixture, in order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

FIXTURE_KEYS = ("actor", "call", "object", "changes", "after")


def load_fixture(path: Path) -> dict[str, Any]:
    """A fixture with its ``include:`` items expanded from ``_shared.yaml`` beside it."""
    shared = yaml.safe_load((path.parent / "_shared.yaml").read_text())
    fixture = dict(yaml.safe_load(path.read_text()))
    writes: list[dict[str, Any]] = []
    for item in fixture["writes"]:
        writes.extend(shared[item["include"]] if "include" in item else [item])
    fixture["writes"] = writes
    return fixture


def value_matches(want: Any, got: Any) -> bool:
    """Equality, with ``{regex: ...}`` matching strings, ``{between: [a, b]}`` integers,
    and mappings compared key by key (only the keys the fixture names)."""
    if isinstance(want, Mapping) and set(want) == {"regex"}:
        return isinstance(got, str) and re.search(str(want["regex"]), got) is not None
    if isinstance(want, Mapping) and set(want) == {"between"}:
        low, high = want["between"]
        return isinstance(got, int) and low <= got <= high
    if isinstance(want, Mapping):
        return isinstance(got, Mapping) and all(
            value_matches(v, got.get(k)) for k, v in want.items()
        )
    if isinstance(want, list):
        return isinstance(got, list) and len(want) == len(got) and _each_once(want, got)
    return bool(want == got)


def _each_once(want: list[Any], got: list[Any]) -> bool:
    """Lists match in any order (a node's conditions), each item used once."""
    free = list(got)
    for w in want:
        hit = next((i for i, g in enumerate(free) if value_matches(w, g)), None)
        if hit is None:
            return False
        free.pop(hit)
    return True


def played(fixture: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The fixture's writes spotrun-dev makes itself, reduced to the compared keys."""
    return [
        {k: w[k] for k in FIXTURE_KEYS if k in w}
        for w in fixture["writes"]
        if not w.get("observed")
    ]


def plan_mismatches(fixture: Mapping[str, Any], rendered: Sequence[Mapping[str, Any]]) -> list[str]:
    """Differences between a rendered plan and the fixture, empty when they agree."""
    want = played(fixture)
    problems = []
    if len(want) != len(rendered):
        problems.append(f"{len(rendered)} writes, the fixture has {len(want)}")
    for i, (w, g) in enumerate(zip(want, rendered, strict=False)):
        if not value_matches(w, dict(g)) or set(w) != set(g):
            problems.append(f"write {i}: fixture {w!r} != plan {dict(g)!r}")
    return problems


# --- watch events back into changes ------------------------------------------------------


def _taints(obj: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(t["key"], t["effect"]): t for t in (obj.get("spec") or {}).get("taints") or []}


def _conds(obj: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def _cond_view(c: Mapping[str, Any]) -> dict[str, Any]:
    return {k: c.get(k) for k in ("type", "status", "reason", "message")}


def node_changes(
    before: Mapping[str, Any], after: Mapping[str, Any], event: str
) -> list[dict[str, Any]]:
    """The changes one Node watch event made, in the fixture vocabulary."""
    out: list[dict[str, Any]] = []
    old_t, new_t = _taints(before), _taints(after)
    for key, t in new_t.items():
        if key not in old_t:
            out.append({"taint_added": {k: t[k] for k in ("key", "effect", "value") if k in t}})
    out += [{"taint_removed": {"key": k[0], "effect": k[1]}} for k in old_t if k not in new_t]
    old_l = (before.get("metadata") or {}).get("labels") or {}
    for k, v in ((after.get("metadata") or {}).get("labels") or {}).items():
        if old_l.get(k) != v:
            out.append({"label_added": {"key": k, "value": v}})
    if (after.get("spec") or {}).get("unschedulable") and not (before.get("spec") or {}).get(
        "unschedulable"
    ):
        out.append({"cordoned": True})
    if (after.get("metadata") or {}).get("deletionTimestamp") and not (
        before.get("metadata") or {}
    ).get("deletionTimestamp"):
        out.append({"node_deleting": True})
    old_f = set((before.get("metadata") or {}).get("finalizers") or [])
    # A deleted object had no finalizer left, whatever its last state listed.
    new_f = (
        set() if event == "DELETED" else set((after.get("metadata") or {}).get("finalizers") or [])
    )
    out += [{"finalizer_removed": f} for f in sorted(old_f - new_f)]
    old_c, new_c = _conds(before), _conds(after)
    changed = [
        _cond_view(c)
        for t, c in new_c.items()
        if (old_c.get(t) or {}).get("status") != c.get("status")
    ]
    if changed:
        out.append({"conditions": changed})
    if event == "DELETED":
        out.append({"node_deleted": True})
    return out


def pod_changes(
    before: Mapping[str, Any], after: Mapping[str, Any], event: str
) -> list[dict[str, Any]]:
    """The changes one Pod watch event made, in the fixture vocabulary."""
    out: list[dict[str, Any]] = []
    old_dt, new_dt = _conds(before).get("DisruptionTarget"), _conds(after).get("DisruptionTarget")
    if new_dt and new_dt.get("status") == "True" and old_dt != new_dt:
        view = {"reason": new_dt.get("reason"), "message": new_dt.get("message")}
        out.append({"disruption_target": view})
    meta_b, meta_a = before.get("metadata") or {}, after.get("metadata") or {}
    if meta_a.get("deletionTimestamp") and not meta_b.get("deletionTimestamp"):
        out.append(
            {"deletion_started": {"gracePeriodSeconds": meta_a.get("deletionGracePeriodSeconds")}}
        )
    phase_b = (before.get("status") or {}).get("phase")
    phase_a = (after.get("status") or {}).get("phase")
    if phase_a != phase_b and phase_a in ("Failed", "Succeeded"):
        out.append({"pod_phase": phase_a})
        out.append({"pod_status": pod_status_view(after)})
    if event == "DELETED":
        out.append({"pod_deleted": True})
    return out


def pod_status_view(pod: Mapping[str, Any]) -> dict[str, Any]:
    """A pod's status in the shape of a plan's ``pod_status`` change."""
    st = pod.get("status") or {}
    dt_cond = _conds(pod).get("DisruptionTarget") or {}
    codes = [
        ((cs.get("state") or {}).get("terminated") or {}).get("exitCode")
        for cs in st.get("containerStatuses") or []
    ]
    return {
        "phase": st.get("phase"),
        "reason": st.get("reason"),
        "message": st.get("message"),
        "disruptionTarget": {"reason": dt_cond.get("reason"), "message": dt_cond.get("message")},
        "exitCode": codes[0] if codes else None,
    }


def event_changes(events: Sequence[tuple[str, Mapping[str, Any]]]) -> list[list[dict[str, Any]]]:
    """Kubernetes Events recorded (ADDED), in the ``event`` change vocabulary."""
    return [
        [{"event": {k: obj.get(k) for k in ("type", "reason", "message")}}]
        for typ, obj in events
        if typ == "ADDED"
    ]


def changes_per_event(
    initial: Mapping[str, Any], events: Sequence[tuple[str, Mapping[str, Any]]], kind: str
) -> list[list[dict[str, Any]]]:
    """One list of changes per watch event (empty for heartbeats), from ``initial``."""
    differ = node_changes if kind == "node" else pod_changes
    out: list[list[dict[str, Any]]] = []
    prev = initial
    for typ, obj in events:
        out.append(differ(prev, obj, typ))
        prev = obj
    return out


def _satisfies(want: Sequence[Mapping[str, Any]], got: Sequence[Mapping[str, Any]]) -> bool:
    """Every change the write makes is in this one event."""
    return all(any(value_matches(w, g) for g in got) for w in want)


def order_mismatches(
    writes: Sequence[Mapping[str, Any]], events: Sequence[Sequence[Mapping[str, Any]]]
) -> list[str]:
    """Check that each write shows up as one watch event, in the fixture's order.

    A write marked ``unordered`` may come before or after its unordered neighbours, but
    still after the last ordered write. Each event serves one write."""
    problems: list[str] = []
    cursor = -1  # the event the last ordered write matched
    group_end = -1  # the latest event matched by the unordered writes since then
    used: set[int] = set()
    for w in writes:
        want = list(w["changes"])
        start = cursor + 1 if w.get("unordered") else max(cursor, group_end) + 1
        hit = next(
            (i for i in range(start, len(events)) if i not in used and _satisfies(want, events[i])),
            None,
        )
        if hit is None:
            problems.append(f"no event for {w['actor']} {want!r} after event {start - 1}")
            continue
        used.add(hit)
        if w.get("unordered"):
            group_end = max(group_end, hit)
        else:
            cursor, group_end = hit, -1
    return problems


# Changes only the component under test makes; the node lifecycle controller's taints
# (node.kubernetes.io/...) and condition updates also come from the real cluster itself.
_STRICT = ("cordoned", "label_added", "taint_added", "taint_removed", "node_deleting")
_CLUSTER_TAINTS = "node.kubernetes.io/"


def unclaimed(
    writes: Sequence[Mapping[str, Any]], events: Sequence[Sequence[Mapping[str, Any]]]
) -> list[str]:
    """Changes the watch saw that no write of the fixture makes (an extra cordon, a taint
    the component never adds)."""
    claimed = [c for w in writes for c in w["changes"]]
    problems = []
    for i, event in enumerate(events):
        for change in event:
            kind = next(iter(change))
            if kind not in _STRICT:
                continue
            body = change[kind]
            if kind.startswith("taint") and str(body.get("key", "")).startswith(_CLUSTER_TAINTS):
                continue
            if not any(value_matches(c, change) for c in claimed):
                problems.append(f"event {i}: {change!r} is not something the component writes")
    return problems
