"""The operator's API traffic, counted in the apiserver's audit log by its user agent
(kopf's watches say ``kopf/``, the operator's own calls ``spotrun-operator/``): in steady
state a reconcile reads nothing (watch caches) and an idle run costs no write; a storm of
spot interruptions costs a bounded number of writes per recovery; and the
operator's own request metrics (``rest_client_requests_total``) count what the apiserver
logged of it."""

from __future__ import annotations

import collections
import threading
from typing import Any

from kubernetes import client
from observe_helpers import AuditLog
from operator_metrics import REQUESTS, Samples, scrape

from controller_helpers import create, pods, spot_nodes, status, training_run
from kube_helpers import holds, poll
from spotrun_dev import inject
from spotrun_dev.prometheus import free_port

RUNS = 20
AGENT = "spotrun-operator/"
READS = {"get", "list"}
WRITES = {"create", "update", "patch", "delete", "deletecollection"}
# The HTTP method of each verb the audit log names (the apiserver's RequestInfo).
METHODS = {
    "get": "GET", "list": "GET", "watch": "GET", "create": "POST", "update": "PUT",
    "patch": "PATCH", "delete": "DELETE", "deletecollection": "DELETE",
}  # fmt: skip
# Writes of one recovery, as the operator makes them: at most one status write per state a
# user sees (the verdict, before anything acts on it; every pod gone; the next attempt,
# named before its job is created; Running, with the gang's placement when its pods run
# within reconcile.PLACEMENT_WRITE_SECONDS, as kwok's do; "gone" and "next attempt" are one
# write when the stop outlasts the backoff, as the trainer's save does in production), the
# job's deletion (its pods go with it: garbage collector), a force deletion of each pod
# whose node died (no kubelet will confirm its end), the next job, and one event
# (Preempted, which names the next attempt). Issue 11 asks for 4 "or say which one more
# and why": the status writes.
STATUS_WRITES_PER_RECOVERY = 4
# The runs here are 1-pod gangs: at most one force deletion each (NTH's instance dies).
FORCE_DELETES_PER_RECOVERY = 1
WRITES_PER_RECOVERY = STATUS_WRITES_PER_RECOVERY + 1 + 1 + 1 + FORCE_DELETES_PER_RECOVERY


def operator_requests(audit: AuditLog, since: int) -> list[dict[str, Any]]:
    return [
        ev
        for ev in audit.all_events(since)
        if str(ev.get("userAgent") or "").startswith(AGENT)
        and ev.get("stage") == "ResponseComplete"
    ]


def tally(events: list[dict[str, Any]], verbs: set[str]) -> collections.Counter[str]:
    def what(ev: dict[str, Any]) -> str:
        ref = ev.get("objectRef") or {}
        sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
        return f"{ev['verb']} {ref.get('resource')}{sub}"

    return collections.Counter(what(ev) for ev in events if ev.get("verb") in verbs)


def _of_runs(ev: dict[str, Any], runs: list[str]) -> bool:
    name = str((ev.get("objectRef") or {}).get("name") or "")
    return any(name == r or name.startswith((f"{r}-a", f"{r}.")) for r in runs)


def audited(events: list[dict[str, Any]]) -> collections.Counter[tuple[str, str]]:
    """The operator's requests the apiserver logged, by HTTP method and answer code."""
    return collections.Counter(
        (METHODS[ev["verb"]], str((ev.get("responseStatus") or {}).get("code"))) for ev in events
    )


def counted(before: Samples, after: Samples) -> collections.Counter[tuple[str, str]]:
    """The requests the operator counted itself (``rest_client_requests_total``)."""
    out: collections.Counter[tuple[str, str]] = collections.Counter()
    for (name, labels), value in after.items():
        if name == REQUESTS and (grown := int(value - before.get((name, labels), 0.0))):
            have = dict(labels)
            out[(have["method"], have["code"])] += grown
    return out


def all_running(custom: client.CustomObjectsApi, namespace: str, names: list[str]) -> bool:
    return all(status(custom, namespace, n).get("phase") == "Running" for n in names)


def test_steady_state_reads_nothing_and_a_storm_writes_little_per_recovery(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator_factory: Any,
    audit: AuditLog,
) -> None:
    port = free_port()
    operator_factory(f"--metrics-port={port}", "--metrics-address=127.0.0.1").start()
    names = [f"r{i:02d}" for i in range(RUNS)]
    for name in names:
        create(custom, namespace, training_run(name, nodes=1, gpusPerNode=1))
    poll(f"{RUNS} runs Running", lambda: all_running(custom, namespace, names), timeout=240)

    # Steady state: three resyncs (--resync-seconds=5) of every run, and not one request.
    since = audit.offset()

    def quiet() -> bool:
        return not tally(operator_requests(audit, since), READS | WRITES)

    holds("no read and no write of the operator", quiet, duration=20, interval=1)
    steady = operator_requests(audit, since)
    assert not tally(steady, READS), f"reads in steady state: {tally(steady, READS)}"
    assert not tally(steady, WRITES), f"writes in steady state: {tally(steady, WRITES)}"

    # The storm: spot interruption notices (NTH's taint, then the instance dies) on half the
    # spot nodes at once.
    where = {n: pods(core, namespace, n, 1)[0].spec.node_name for n in names}
    busiest = collections.Counter(where.values()).most_common()
    victims: list[str] = []
    while sum(1 for n in names if where[n] in victims) < RUNS // 2:
        victims.append(busiest[len(victims)][0])
    hit = [n for n in names if where[n] in victims]
    since, scraped = audit.offset(), scrape(port)
    threads = [threading.Thread(target=inject.interrupt, args=(core, v, "nth")) for v in victims]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)

    def recovered() -> bool:
        return all(
            (s := status(custom, namespace, n)).get("attempt") == 2 and s.get("phase") == "Running"
            for n in hit
        )

    poll(f"{len(hit)} runs recovered", recovered, timeout=300)
    # The hit runs' own requests (their status, jobs and events; nothing of the others).
    storm = [ev for ev in operator_requests(audit, since) if _of_runs(ev, hit)]
    writes = tally(storm, WRITES)
    per_recovery = sum(writes.values()) / len(hit)
    print(f"\n{len(hit)} recoveries on {len(victims)} nodes: {per_recovery:.2f} writes each")
    for request, count in sorted(writes.items()):
        print(f"  {count:4d}  {request}  ({count / len(hit):.2f} per recovery)")
    print(f"  reads: {dict(tally(storm, READS))}")
    for n in names:
        st = status(custom, namespace, n)
        assert (st.get("preemptions"), st.get("failures")) == ((1, 0) if n in hit else (0, 0)), n
    assert writes["create events"] == len(hit), writes
    assert writes["delete pytorchjobs"] == writes["create pytorchjobs"] == len(hit), writes
    assert writes["delete pods"] <= FORCE_DELETES_PER_RECOVERY * len(hit), writes
    per_run = collections.Counter(
        str(ev["objectRef"]["name"])
        for ev in storm
        if ev["verb"] == "patch" and ev["objectRef"].get("subresource") == "status"
    )
    assert max(per_run.values()) <= STATUS_WRITES_PER_RECOVERY, per_run
    assert per_recovery <= WRITES_PER_RECOVERY, writes
    assert spot_nodes(core)

    # The operator's own request metrics count what the apiserver logged of it, request
    # by request (method and code; conflicts included), once the last writes are logged.
    poll(
        "rest_client_requests_total matches the audit log",
        lambda: counted(scraped, scrape(port)) == audited(operator_requests(audit, since)),
        timeout=30,
    )
    assert counted(scraped, scrape(port))[("PATCH", "200")] >= len(hit)
