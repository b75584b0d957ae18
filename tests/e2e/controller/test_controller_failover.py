"""Two operators with --leader-elect: the leader is SIGKILLed during a burst of spot
interruptions; the standby, its watches warm, takes the Lease over and finishes every
recovery exactly once. Then a graceful stop hands the Lease over at once."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from typing import Any

from kubernetes import client

from controller_helpers import create, jobs, running_gang, status, training_run
from controller_process import Operator
from kube_helpers import holds, poll
from spotrun_dev import inject

LEASE = "spotrun-operator"
LEASE_SECONDS, RETRY_SECONDS = 15, 2  # the operator's defaults (client-go's)
# kopf's log format: "[2030-01-01 12:00:00,123] spotrun_operator.run [INFO    ] ns/run ..."
_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] (\S+)\s+\[\w+\s*\] (.*)$")
# Runs, their gang sizes and the signal that takes one node of each. 4 of the 8 spot
# nodes run the gangs; 3 are reclaimed (deleted), so the next attempts fit on the 5 left.
RUNS = {"ha-a": (2, "nth"), "ha-b": (1, "karpenter"), "ha-c": (1, "asg")}


def _election(namespace: str) -> tuple[str, ...]:
    return ("--leader-elect", f"--leader-election-namespace={namespace}")


def _holder(coord: client.CoordinationV1Api, namespace: str) -> client.V1LeaseSpec | None:
    try:
        spec: client.V1LeaseSpec = coord.read_namespaced_lease(LEASE, namespace).spec
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return spec


def _held_by(
    coord: client.CoordinationV1Api, namespace: str, prefix: str
) -> client.V1LeaseSpec | None:
    """The Lease's spec once a process named ``prefix`` holds it."""
    spec = _holder(coord, namespace)
    return spec if spec is not None and (spec.holder_identity or "").startswith(prefix) else None


def _noticed(core: client.CoreV1Api, node: str) -> bool:
    """The interruption reached ``node``: tainted beyond the fleet's GPU taint, cordoned,
    or being deleted (or gone)."""
    try:
        n = core.read_node(node)
    except client.exceptions.ApiException as exc:
        return bool(exc.status == 404)
    taints = {t.key for t in n.spec.taints or []} - {"nvidia.com/gpu"}
    return bool(taints or n.spec.unschedulable or n.metadata.deletion_timestamp)


def _log_lines(op: Operator) -> list[tuple[float, str, str]]:
    """(epoch seconds, logger, message) of every line of the operator's log."""
    out = []
    for line in op.log_path.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if m:
            at = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((at, m.group(2), m.group(3)))
    return out


def _decisions(op: Operator, namespace: str) -> list[tuple[float, str]]:
    """The decisions the operator logged (one line per event of a reconcile)."""
    return [
        (at, msg)
        for at, logger, msg in _log_lines(op)
        if logger.startswith("spotrun_operator.run") and msg.startswith(f"{namespace}/")
    ]


def _started(op: Operator, name: str) -> Operator:
    op.env = {"POD_NAME": name}
    return op.start()


def _state(custom: client.CustomObjectsApi, namespace: str) -> dict[str, tuple[Any, ...]]:
    """Per run: its PyTorchJobs, attempt, preemptions, failures and phase."""
    out = {}
    for run in RUNS:
        st = status(custom, namespace, run)
        out[run] = (
            jobs(custom, namespace, run),
            st.get("attempt"),
            st.get("preemptions"),
            st.get("failures"),
            st.get("phase"),
        )
    return out


def _exact(custom: client.CustomObjectsApi, namespace: str) -> bool:
    """Exactly one live attempt (the second) per run, one preemption, no failure."""
    want = {run: ([f"{run}-a2"], 2, 1, 0, "Running") for run in RUNS}
    return _state(custom, namespace) == want


def test_standby_takes_over_a_burst_of_interruptions_exactly_once(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    api_client: client.ApiClient,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator_factory: Any,
) -> None:
    coord = client.CoordinationV1Api(api_client)
    leader = _started(operator_factory(*_election(namespace)), "op-a")
    poll("op-a to hold the Lease", lambda: _held_by(coord, namespace, "op-a_"), timeout=30)
    standby = _started(operator_factory(*_election(namespace)), "op-b")
    poll(
        "op-b to stand by (it saw op-a's Lease)",
        lambda: "is held by 'op-a_" in standby.log_path.read_text(errors="replace"),
        timeout=30,
    )
    for run, (nodes, _) in RUNS.items():
        create(custom, namespace, training_run(run, nodes=nodes))
    gangs = {run: running_gang(core, namespace, run, 1, n) for run, (n, _) in RUNS.items()}
    assert not _decisions(standby, namespace), "the standby acted"

    # The burst: one node of each run reclaimed, half a second apart; the leader is
    # SIGKILLed right after the first notice.
    threads = []
    killed_at = 0.0
    for i, (run, (_, signal)) in enumerate(RUNS.items()):
        victim = gangs[run][0].spec.node_name
        t = threading.Thread(target=inject.interrupt, args=(core, victim, signal))
        t.start()
        threads.append(t)
        # Each notice lands (the node's first write: a taint, a cordon or its deletion)
        # before the next one starts; the leader dies right after the first.
        poll(f"the {signal} notice on {victim}", lambda v=victim: _noticed(core, v), timeout=30)
        if i == 0:
            killed_at = time.time()
            leader.kill()

    spec = poll(
        "op-b to take the Lease over",
        lambda: _held_by(coord, namespace, "op-b_"),
        timeout=LEASE_SECONDS + 4 * RETRY_SECONDS + 10,
        interval=0.1,
    )
    acquired = spec.acquire_time.timestamp() - killed_at
    assert spec.lease_transitions == 1
    for t in threads:
        t.join(180)
    for run, (n, _) in RUNS.items():
        running_gang(core, namespace, run, 2, n, timeout=120)
    poll("every run Running in attempt 2", lambda: _exact(custom, namespace), timeout=30)
    holds(
        "exactly one live attempt per run and exact counters",
        lambda: _exact(custom, namespace),
        duration=4,
    )
    # The standby decided nothing before it held the Lease, and its first decision
    # followed its acquisition.
    decisions = _decisions(standby, namespace)
    assert decisions, "the new leader logged no decision"
    first = decisions[0][0] - killed_at
    print(
        f"\nfailover: leader SIGKILLed -> Lease acquired by the standby {acquired:.2f}s, "
        f"-> its first decision {first:.2f}s ({decisions[0][1][:100]})"
    )
    assert first >= acquired - 0.01
    # client-go's rules: the standby takes over one lease duration after it last saw the
    # leader renew (at most a retry period, jittered, before the kill), at its next retry.
    assert acquired <= LEASE_SECONDS + 2 * 1.2 * RETRY_SECONDS + 1, acquired
    signals = {}
    for run in RUNS:
        last = status(custom, namespace, run)["lastPreemption"]
        assert last["attempt"] == 1, last
        signals[run] = last["signal"]
    print(f"signals recorded: {signals}")

    # A graceful stop releases the Lease: op-a, back as the standby, takes it at once.
    again = _started(operator_factory(*_election(namespace)), "op-a2")
    poll(
        "op-a2 to stand by",
        lambda: "is held by 'op-b_" in again.log_path.read_text(errors="replace"),
        timeout=30,
    )
    stopped_at = time.time()
    standby.stop()
    spec = poll(
        "op-a2 to take the released Lease",
        lambda: _held_by(coord, namespace, "op-a2_"),
        timeout=30,
        interval=0.1,
    )
    handover = spec.acquire_time.timestamp() - stopped_at
    print(f"graceful handover: SIGTERM -> Lease acquired by the standby {handover:.2f}s")
    assert spec.lease_transitions == 2
    assert handover < 1.2 * RETRY_SECONDS + 2, handover
    assert standby.proc is not None and standby.proc.returncode == 0
    holds("nothing changes on the handover", lambda: _exact(custom, namespace), duration=3)
