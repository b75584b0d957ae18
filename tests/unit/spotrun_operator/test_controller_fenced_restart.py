"""Fenced restarts: after an attempt ends, the next one waits only for the ranks that may
still stop by themselves (docs/operator.md, "Fenced restarts"). A pod its own gang saw die
(a survivor's ``lost-pod=`` words) or a pod on an unreachable node does not hold it back:
the trainer's fence keeps such a rank from committing. A rank whose kubelet still reports
(a graceful node shutdown: Ready False) may be saving the checkpoint the next attempt
loads, and is waited for."""

from __future__ import annotations

from typing import Any

import pytest
from controller_fakes import CFG, job, merge, node, observed, pod, running_status

from spotrun_api import contract
from spotrun_operator.decisions.reconcile import decide
from spotrun_operator.judging import fence
from spotrun_operator.model.plan import CreateJob

LOST = "llm-a1-worker-0"


def survivor(words: bool = True) -> dict[str, Any]:
    """The master's rank left with EXIT_PEER_LOST, naming (or not) the pod it lost."""
    said = f"peer lost: rank 1 ({LOST}) sent no heartbeat for 5.1s; rank 0 exits 86"
    if words:
        said += f" [{contract.lost_pod_words(LOST)}]"
    p: dict[str, Any] = pod(
        "llm-a1-master-0", node_name="n1", phase="Failed", exit_code=contract.EXIT_PEER_LOST
    )
    p["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = said + "\n"
    return p


def lost_pod(**kw: Any) -> dict[str, Any]:
    """The dead peer's pod: still Running as far as the apiserver knows, being deleted."""
    p: dict[str, Any] = pod(LOST, node_name="n2", master=False, deleting=True, **kw)
    return p


def ended_by_peer_lost() -> dict[str, Any]:
    """Status once attempt 1 ended with peer-lost (survivor still listed)."""
    st: dict[str, Any] = running_status()
    d = decide(observed(now=20, status=st, jobs={1: job(1)}, pods=[survivor(), lost_pod()]), CFG)
    st = merge(st, d)
    assert st["attempts"][0]["outcome"] == "Preempted"
    return st


def next_decision(st: dict[str, Any], n2_ready: str = "True", words: bool = True) -> bool:
    """Whether the next decision (past any backoff) creates attempt 2, with the survivor's
    pod deleted (the job's deletion took it) and the lost pod still there."""
    obs = observed(
        now=20 + 3600,
        status=st,
        pods=[lost_pod()],
        deleted_pods=[survivor(words)],
        nodes=[node("n1"), node("n2", ready=n2_ready, zone="us-east-1b")],
    )
    d = decide(obs, CFG)
    return any(isinstance(a, CreateJob) for a in d.actions)


def test_the_pod_its_gang_saw_die_does_not_hold_the_next_attempt_back() -> None:
    st = ended_by_peer_lost()
    assert next_decision(st)


def test_without_the_survivors_words_the_next_attempt_waits() -> None:
    st = ended_by_peer_lost()
    assert not next_decision(st, words=False)


@pytest.mark.parametrize(("ready", "starts"), [("Unknown", True), ("False", False)])
def test_an_unreachable_node_does_not_hold_it_back_a_reporting_one_does(
    ready: str, starts: bool
) -> None:
    st = ended_by_peer_lost()
    assert next_decision(st, n2_ready=ready, words=False) is starts


def test_a_survivor_naming_itself_frees_nothing() -> None:
    own = survivor()
    msg = f"peer lost: ... [{contract.lost_pod_words('llm-a1-master-0')}]"
    own["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = msg
    assert fence.lost_pods([own]) == frozenset()
    assert fence.lost_pods([survivor()]) == {LOST}
    # Only a peer-lost exit's message counts: a crash's message naming a pod frees none.
    crashed = pod("w", phase="Failed", exit_code=1)
    crashed["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = msg
    assert fence.lost_pods([crashed]) == frozenset()
