"""An operator restarted under 200 existing TrainingRuns rebuilds its watch caches before
its first decision and resumes with exact counters: no run gets a second live attempt,
runs whose node was reclaimed while it was down count exactly one preemption, and the
runs nothing happened to cost no write."""

from __future__ import annotations

import collections
import time
from typing import Any

from kubernetes import client
from observe_helpers import AuditLog

from controller_helpers import LABEL_RUN, PYTORCHJOB, create, training_run
from kube_helpers import poll
from spotrun_dev import inject

RUNS = 200
AGENT = "spotrun-operator/"
WRITES = {"create", "update", "patch", "delete"}


def job_names(custom: client.CustomObjectsApi, namespace: str) -> dict[str, list[str]]:
    items = custom.list_namespaced_custom_object(*PYTORCHJOB[:2], namespace, PYTORCHJOB[2])
    out: dict[str, list[str]] = collections.defaultdict(list)
    for j in items["items"]:
        out[j["metadata"]["labels"][LABEL_RUN]].append(j["metadata"]["name"])
    return out


def runs_by_status(custom: client.CustomObjectsApi, namespace: str) -> dict[str, dict[str, Any]]:
    items = custom.list_namespaced_custom_object(
        "spotrun.dev", "v1alpha1", namespace, "trainingruns"
    )
    return {r["metadata"]["name"]: r.get("status") or {} for r in items["items"]}


def running_pod(pod: client.V1Pod) -> bool:
    return pod.status.phase == "Running" and not pod.metadata.deletion_timestamp


def unschedulable(pod: client.V1Pod) -> bool:
    conds = {c.type: c for c in pod.status.conditions or []}
    scheduled = conds.get("PodScheduled")
    waiting = {"Unschedulable", "SchedulingGated"}
    return bool(scheduled and scheduled.status == "False" and scheduled.reason in waiting)


def test_a_restart_under_200_runs_resumes_exactly(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator: Any,
    audit: AuditLog,
) -> None:
    names = [f"s{i:03d}" for i in range(RUNS)]
    for name in names:
        create(custom, namespace, training_run(name, nodes=1, gpusPerNode=1))

    def settled() -> dict[str, dict[str, Any]] | None:
        """Every run has attempt 1 and its pod (the training operator creates pods a few
        a second, so a job can exist well before its pod), every pod is Running or
        unschedulable (the fleet is full: nothing is on its way to Running), and the
        operator has seen every gang that runs (a pod it never saw cannot be counted
        when it vanishes while the operator is down)."""
        runs = runs_by_status(custom, namespace)
        jobs = job_names(custom, namespace)
        pods = core.list_namespaced_pod(namespace).items
        made = len(runs) == RUNS and all(jobs.get(n) == [f"{n}-a1"] for n in names)
        made = made and sorted(p.metadata.labels[LABEL_RUN] for p in pods) == names
        still = [p.metadata.name for p in pods if not (running_pod(p) or unschedulable(p))]
        seen = {n for n, s in runs.items() if s.get("phase") == "Running"}
        running = {p.metadata.labels[LABEL_RUN] for p in pods if running_pod(p)}
        return runs if made and not still and seen and seen == running else None

    poll(f"{RUNS} runs with attempt 1, gangs seen", settled, timeout=420, interval=3)

    # The operator dies; while it is down, a spot node is reclaimed (NTH drain, instance
    # gone): its runs' pods end without anyone watching. What it last wrote is read now
    # that nothing can change it.
    operator.kill()
    before = runs_by_status(custom, namespace)
    running = sorted(n for n, s in before.items() if s.get("phase") == "Running")
    pods = [p for p in core.list_namespaced_pod(namespace).items if running_pod(p)]
    on_node = collections.Counter(p.spec.node_name for p in pods)
    victim = on_node.most_common(1)[0][0]
    hit = sorted({p.metadata.labels[LABEL_RUN] for p in pods if p.spec.node_name == victim})
    assert set(hit) <= set(running), {
        p.metadata.name: p.status.phase for p in pods if p.metadata.labels[LABEL_RUN] not in running
    }
    inject.interrupt(core, victim, "nth")
    since = audit.offset()
    started = time.monotonic()
    operator.start()

    def recovered() -> bool:
        # The status names attempt 2 before its job is created (status first, then act).
        runs, jobs = runs_by_status(custom, namespace), job_names(custom, namespace)
        return all(runs[n].get("attempt") == 2 and jobs[n] == [f"{n}-a2"] for n in hit)

    poll(f"{len(hit)} reclaimed runs on attempt 2", recovered, timeout=240, interval=2)
    print(f"\nrestart under {RUNS} runs ({len(running)} Running): {len(hit)} reclaimed runs on "
          f"attempt 2 {time.monotonic() - started:.1f}s after the start")  # fmt: skip

    runs = runs_by_status(custom, namespace)
    jobs = job_names(custom, namespace)
    for n in names:
        want = (2, 1) if n in hit else (1, 0)
        assert (runs[n].get("attempt"), runs[n].get("preemptions") or 0) == want, n
        assert runs[n].get("failures") in (None, 0), n
        assert jobs[n] == [f"{n}-a{want[0]}"], (n, jobs[n])

    # The runs nothing happened to were not written by the new operator.
    done = [ev for ev in audit.all_events(since) if ev.get("stage") == "ResponseComplete"]
    ours = [ev for ev in done if str(ev.get("userAgent") or "").startswith(AGENT)]
    written = collections.Counter(
        str((ev.get("objectRef") or {}).get("name"))
        for ev in ours
        if ev.get("verb") in WRITES
        and (ev.get("objectRef") or {}).get("resource") == "trainingruns"
    )
    untouched = [n for n in names if n not in hit and before[n].get("phase") == "Running"]
    assert not [n for n in untouched if written[n]], {
        n: written[n] for n in untouched if written[n]
    }
