"""lastPreemption.time and spotrun_recovery_seconds start at the signal's own timestamp
(a pod's DisruptionTarget, a node's Ready transition or deletion, a taint's timeAdded),
so the time the operator took to see it is part of the recovery it reports."""

from __future__ import annotations

import dataclasses

from controller_fakes import CFG, gang, job, merge, node, observed, running_status, ts

from spotrun_dev import traces
from spotrun_operator.decisions.reconcile import decide
from spotrun_operator.facts.signals import node_info


def test_an_eviction_counts_from_its_disruption_target() -> None:
    tainted = [node("n1"), node("n2", taints=(traces.NTH_SPOT_ITN,))]
    st = running_status()
    obs = observed(now=60, status=st, jobs={1: job(1)}, pods=gang(1), nodes=tainted)
    last = merge(st, decide(obs, CFG))["lastPreemption"]
    assert (last["signal"], last["time"]) == ("spot-interruption", ts(60))  # seen at 60
    # NTH's taint carries no time; the eviction of its drain does.
    st = running_status()
    pods = gang(1)
    pods[1]["status"]["conditions"] = [
        {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
         "message": "Eviction API: evicting", "lastTransitionTime": ts(52)},
    ]  # fmt: skip
    obs = observed(now=60, status=st, jobs={1: job(1)}, pods=pods, nodes=tainted)
    last = merge(st, decide(obs, CFG))["lastPreemption"]
    assert (last["signal"], last["time"]) == ("spot-interruption", ts(52))
    # A node that stopped reporting 40 s ago.
    st = running_status()
    lost = dataclasses.replace(node("n2", ready="Unknown"), exists=False)
    lost = dataclasses.replace(lost, ready_since=observed(now=20).now)
    obs = observed(now=60, status=st, jobs={1: job(1)}, pods=gang(1), nodes=[node("n1"), lost])
    last = merge(st, decide(obs, CFG))["lastPreemption"]
    assert (last["signal"], last["time"]) == ("node-lost", ts(20))


def test_the_recovery_metric_includes_the_time_to_detect() -> None:
    st = running_status()
    gone = dataclasses.replace(node("n2"), exists=False, deleting=True,
                               deleting_since=observed(now=40).now)  # fmt: skip
    d = decide(
        observed(now=45, status=st, jobs={1: job(1)}, pods=gang(1), nodes=[node("n1"), gone]), CFG
    )
    st = merge(st, d)
    assert st["lastPreemption"]["time"] == ts(40)
    st = merge(st, decide(observed(now=50, status=st, jobs={}, pods=[]), CFG))
    st = merge(st, decide(observed(now=70, status=st, jobs={}, pods=[]), CFG))
    assert st["attempt"] == 2
    d = decide(observed(now=80, status=st, jobs={2: job(2)}, pods=gang(2)), CFG)
    recovery = [m for m in d.metrics if m.name == "recovery"]
    assert [m.value for m in recovery] == [40.0]  # Running at 80, signal at 40 (seen at 45)


def test_node_timestamps_are_read_from_the_node() -> None:
    body = {
        "metadata": {"name": "n", "deletionTimestamp": "2026-01-01T00:00:09Z"},
        "spec": {"taints": [
            {"key": "a", "effect": "NoExecute", "timeAdded": "2026-01-01T00:00:05Z"},
            {"key": "b", "effect": "NoSchedule"},
            {"key": "c", "effect": "NoExecute", "timeAdded": "2026-01-01T00:00:03Z"},
        ]},
    }  # fmt: skip
    info = node_info(body)
    assert info.tainted_since is not None and info.tainted_since.second == 3
    assert info.deleting_since is not None and info.deleting_since.second == 9
