"""A rank that left with EXIT_PEER_LOST (a peer of its gang stopped heartbeating) is
evidence that the gang is broken now: a preemption (peer-lost) with no failure charged,
unless a rank failed with an application error (then that failure), and a node's own
evidence, when it shows, names the loss instead."""

from __future__ import annotations

from typing import Any

from controller_fakes import CFG, at, gang, job, merge, node, observed, pod, running_status

from spotrun_api import contract
from spotrun_operator.decisions.reconcile import decide
from spotrun_operator.facts import signals
from spotrun_operator.judging import classify as c
from spotrun_operator.judging.classify import NodeInfo
from spotrun_operator.judging.classify import VerdictKind as Kind
from spotrun_operator.judging.evidence import app_error
from spotrun_operator.model.plan import DeleteJob

SAID = (
    "peer lost: rank 1 (llm-a1-worker-0) sent no heartbeat for 30.2s (limit 30.0s); rank 0 exits 86"
)


def verdict(
    pods: list[dict[str, Any]], nodes: list[NodeInfo] | None = None, **kw: Any
) -> c.Verdict:
    nodes = nodes if nodes is not None else [node("n1"), node("n2", zone="us-east-1b")]
    kw.setdefault("now", at(0))
    return c.classify(pods=pods, nodes={n.name: n for n in nodes}, expected=2, **kw)


def survivor(name: str = "llm-a1-master-0", node_name: str = "n1", **kw: Any) -> dict[str, Any]:
    """The master's rank left with EXIT_PEER_LOST and wrote why (its termination message)."""
    p: dict[str, Any] = pod(
        name, node_name=node_name, phase="Failed", exit_code=contract.EXIT_PEER_LOST, **kw
    )
    p["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = SAID + "\n"
    return p


def test_peer_lost_is_not_an_application_error() -> None:
    assert not app_error(survivor())
    assert app_error(pod("w", phase="Failed", exit_code=1))


def test_a_fenced_rank_is_not_an_application_error() -> None:
    # An older attempt's rank that found the checkpoint folder fenced by a newer attempt
    # refused its commit and left (docs/trainer.md, "Fenced checkpoints").
    fenced = pod("w", phase="Failed", exit_code=contract.EXIT_FENCED)
    assert contract.EXIT_FENCED == 87
    assert not app_error(fenced)
    assert app_error(pod("w", phase="Failed", exit_code=contract.EXIT_FENCED + 1))


def test_a_peer_lost_alone_is_a_preemption_at_once_and_no_failure() -> None:
    # The dead peer's pod still shows Running: its node has not been marked yet.
    pods = [survivor(), gang()[1]]
    v = verdict(pods, failure_settle_seconds=45)  # no settle: the gang is broken now
    assert (v.kind, v.reason) == (Kind.PREEMPTED, signals.PEER_LOST)
    assert SAID in v.message and "exited 86" in v.message
    assert v.node == "" and v.nodes == ()  # the survivor's node is the healthy one
    assert v.signal_at == at(0)  # the survivor's finishedAt


def test_a_peer_lost_attempt_spends_the_preemption_budget_only() -> None:
    st = running_status()
    pods = [survivor(), gang(1)[1]]
    d = decide(observed(now=20, status=st, jobs={1: job(1, "Failed")}, pods=pods), CFG)
    st = merge(st, d)
    entry = st["attempts"][0]
    assert (entry["outcome"], entry["reason"]) == ("Preempted", signals.PEER_LOST)
    assert (st["preemptions"], st["failures"]) == (1, 0)
    assert st["lastPreemption"]["signal"] == signals.PEER_LOST
    assert d.actions == [DeleteJob("llm-a1")]


def test_peer_lost_beside_an_application_error_is_that_failure() -> None:
    crashed = pod("w", node_name="n2", master=False, phase="Failed", exit_code=1, finished=0)
    pods = [survivor(), crashed]
    settling = verdict(pods, failure_settle_seconds=45, now=at(10))
    assert (settling.kind, settling.reason) == (Kind.FAILURE_SETTLING, "Error")
    v = verdict(pods, failure_settle_seconds=45, now=at(60))
    assert (v.kind, v.reason) == (Kind.FAILED, "Error")
    assert "container pytorch exited 1" in v.message
    # Also once the crashed pod is gone (remembered from the watch), and with OOM.
    oom = pod("w", node_name="n2", master=False, phase="Failed", exit_code=137,
              term_reason="OOMKilled")  # fmt: skip
    v = verdict([survivor()], deleted_pods=[oom], now=at(60), failure_settle_seconds=45)
    assert (v.kind, v.reason) == (Kind.FAILED, "OOMKilled")


def test_the_dead_peers_node_evidence_wins_over_peer_lost() -> None:
    pods = [survivor(), gang()[1]]
    tainted = node("n2", taints=(signals.TAINT_SPOT_ITN,), zone="us-east-1b")
    v = verdict(pods, [node("n1"), tainted])
    assert (v.kind, v.reason, v.node, v.zone) == (
        Kind.PREEMPTED,
        signals.SPOT_INTERRUPTION,
        "n2",
        "us-east-1b",
    )
    assert v.node_signals == (("n2", signals.SPOT_INTERRUPTION),)
    # The node lifecycle controller marked it Unknown, past the operator's lost grace.
    unknown = node("n2", ready="Unknown", zone="us-east-1b")
    v = verdict(pods, [node("n1"), unknown], node_lost_grace_seconds=0)
    assert (v.kind, v.reason, v.node) == (Kind.PREEMPTED, signals.NODE_LOST, "n2")
    # And a node evidence with an application error still wins, as before.
    crashed = pod("w", node_name="n2", master=False, phase="Failed", exit_code=1)
    v = verdict([survivor(), crashed], [node("n1"), tainted])
    assert (v.kind, v.reason) == (Kind.PREEMPTED, signals.SPOT_INTERRUPTION)


def test_a_survivor_deleted_after_it_left_is_still_peer_lost() -> None:
    # The pod ended on its own (exit 86) before anyone deleted it: not pod-deleted.
    v = verdict([gang()[1]], deleted_pods=[survivor(deleting=True)])
    assert (v.kind, v.reason) == (Kind.PREEMPTED, signals.PEER_LOST)


def test_peer_lost_ranks_just_above_the_unnamed_losses() -> None:
    order = signals.SIGNAL_PRIORITY
    assert order.index(signals.PEER_LOST) + 1 == order.index(signals.POD_REPLACED)
    assert signals.PEER_LOST not in signals.NO_BUDGET_SIGNALS
