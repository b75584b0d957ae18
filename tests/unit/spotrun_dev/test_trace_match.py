"""The comparison of watch events with a fixture: order, one write per event, no extras."""

from __future__ import annotations

from typing import Any

from spotrun_dev import trace_match

TAINT = {"taint_added": {"key": "aws-node-termination-handler/spot-itn", "effect": "NoSchedule"}}
LABEL = {"label_added": {"key": "node.kubernetes.io/exclude-from-external-load-balancers"}}
CORDON = {"cordoned": True}
WRITES: list[dict[str, Any]] = [
    {"actor": "nth", "changes": [TAINT]},
    {"actor": "nth", "changes": [LABEL]},
    {"actor": "nth", "changes": [CORDON]},
]


def _node(taints: tuple[str, ...] = (), unschedulable: bool = False, **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"labels": {}, **meta},
        "spec": {
            "taints": [{"key": k, "effect": "NoSchedule"} for k in taints],
            "unschedulable": unschedulable,
        },
        "status": {"conditions": []},
    }


def test_three_separate_updates_in_order_match() -> None:
    events: list[list[dict[str, Any]]] = [[TAINT], [], [LABEL], [CORDON]]  # with a heartbeat
    assert trace_match.order_mismatches(WRITES, events) == []


def test_one_update_doing_all_three_does_not() -> None:
    assert trace_match.order_mismatches(WRITES, [[TAINT, LABEL, CORDON]])


def test_wrong_order_does_not() -> None:
    assert trace_match.order_mismatches(WRITES, [[CORDON], [TAINT], [LABEL]])


def test_unordered_writes_may_swap_but_stay_after_the_ordered_one() -> None:
    a = {"taint_added": {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}}
    b = {"taint_added": {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}}
    writes: list[dict[str, Any]] = [
        {"actor": "x", "changes": [CORDON]},
        {"actor": "x", "changes": [a], "unordered": True},
        {"actor": "x", "changes": [b], "unordered": True},
        {"actor": "x", "changes": [{"node_deleted": True}]},
    ]
    assert (
        trace_match.order_mismatches(writes, [[CORDON], [b], [a], [{"node_deleted": True}]]) == []
    )
    assert trace_match.order_mismatches(writes, [[b], [CORDON], [a], [{"node_deleted": True}]])


def test_an_extra_cordon_is_unclaimed() -> None:
    writes = [{"actor": "karpenter", "changes": [TAINT]}]
    assert trace_match.unclaimed(writes, [[TAINT], [CORDON]])
    # The cluster's own node lifecycle taints are not the component's, and not checked.
    unreachable = {"taint_added": {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}}
    assert trace_match.unclaimed(writes, [[TAINT], [unreachable]]) == []


def test_node_changes_read_taints_cordon_and_deletion() -> None:
    before = _node(("nvidia.com/gpu",), finalizers=["karpenter.sh/termination"])
    after = _node(("nvidia.com/gpu", "karpenter.sh/disrupted"), unschedulable=True)
    after["metadata"]["deletionTimestamp"] = "2026-11-22T12:00:00Z"
    changes = trace_match.node_changes(before, after, "MODIFIED")
    assert {"cordoned": True} in changes and {"node_deleting": True} in changes
    assert {"taint_added": {"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}} in changes
    # A DELETED object had no finalizer left, whatever its last state listed.
    gone = trace_match.node_changes(before, before, "DELETED")
    assert {"finalizer_removed": "karpenter.sh/termination"} in gone
    assert {"node_deleted": True} in gone


def test_regex_and_null_values() -> None:
    assert trace_match.value_matches({"regex": "^spot-itn-[0-9a-f]{54}$"}, "spot-itn-" + "a" * 54)
    assert not trace_match.value_matches({"regex": "^spot-itn-[0-9a-f]{54}$"}, "nth-1234")
    # value: null in a fixture means the taint has no value at all.
    assert trace_match.value_matches({"key": "k", "value": None}, {"key": "k"})
    assert not trace_match.value_matches({"key": "k", "value": None}, {"key": "k", "value": "v"})
