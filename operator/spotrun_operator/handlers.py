"""kopf wiring, and nothing else: watch events wake the run loops of :mod:`runner`.

kopf is used for its watch streams only. It never writes a TrainingRun: no changing
handlers (no progress annotations), no daemons (no finalizer), and its settings keep any
state it might store in ``spotrun.dev/`` annotations, never in ``status`` (the trainer
writes ``status.progress``; the operator owns the rest through its own merge patches).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import kopf
from kubernetes.client import Configuration

from spotrun_operator.facts.common import (
    GROUP,
    KIND,
    KUEUE_GROUP,
    KUEUE_VERSION,
    LABEL_RUN,
    PLURAL,
    PYTORCHJOB_GROUP,
    PYTORCHJOB_KIND,
    PYTORCHJOB_PLURAL,
    PYTORCHJOB_VERSION,
    VERSION,
)
from spotrun_operator.kubeio.apiserver import credentials
from spotrun_operator.runner import Runner
from spotrun_operator.watching.cache import Cache
from spotrun_operator.watching.initial_sync import Listing
from spotrun_operator.watching.refusals import FAILED_CREATE_POD
from spotrun_operator.watching.store import Store

PREFIX = "spotrun.dev"
LIST_CHUNK_SIZE = 200
WORKER_IDLE_SECONDS = 0.2
# Core Events: the training operator's FailedCreatePod on a PyTorchJob, the apiserver's
# refusal of a pod a run's spec builds (observe reads them while a gang is being made).
# A list of Events goes to etcd whatever its resourceVersion (the apiserver keeps no watch
# cache of Events): listed per look, they were 45 % of the reconcile threads' time at
# 1,100 runs (py-spy). A watch of just these costs nothing while none is posted.
EVENTS: Final = ("v1", "events")
SERVER_FIELD_SELECTORS: Final[dict[str | tuple[str, str], str]] = {
    EVENTS: f"reason={FAILED_CREATE_POD},involvedObject.kind={PYTORCHJOB_KIND}",
}
# Pods and PyTorchJobs of runs only (the handlers' own filters are client-side: without
# these every pod of the cluster came down the watch).
JOBS: Final = (PYTORCHJOB_GROUP, PYTORCHJOB_PLURAL)
SERVER_LABEL_SELECTORS: Final[dict[str | tuple[str, str], str]] = {
    "pods": LABEL_RUN,
    JOBS: LABEL_RUN,
}


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's "last handled" essence, for changing handlers, of which spotrun has none.

    kopf builds the essence of every watch event of every kind all the same (a deep copy of
    the whole body, in ``_detect_causes``) and diffs it, although only changing and
    spawning causes read the diff: 8 % of the operator's CPU samples in
    ``bench/operator_scale.py`` at 330 runs. Nothing is built, stored or fetched here.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def configure(settings: kopf.OperatorSettings) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.persistence.finalizer = f"{PREFIX}/kopf-finalizer"
    # Our events come from the event sink (event_sink.py), one per decision; kopf's would be noise.
    settings.posting.enabled = False
    # Watches are re-established at least this often, so a silently dead connection
    # cannot leave the operator blind for long.
    settings.watching.server_timeout = 300
    # The initial listings come in pages, as client-go's reflector asks for them: neither
    # the apiserver nor the operator holds a whole fleet's listing at once. (Measured: it
    # did not change the operator's RSS at 1,500 nodes.)
    settings.watching.chunk_size = LIST_CHUNK_SIZE
    # Server-side selectors: the apiserver sends only what the handlers would keep.
    for fields_of, fields in SERVER_FIELD_SELECTORS.items():
        settings.watching.field_selectors[fields_of] = fields
    for labels_of, labels in SERVER_LABEL_SELECTORS.items():
        settings.watching.label_selectors[labels_of] = labels
    settings.watching.client_timeout = 330
    # kopf keeps a worker per object for a while after its last event, and that worker
    # holds the event, the whole object as the watch sent it, until it exits. Every handler
    # here only files the object away and wakes a loop, so a worker has nothing to wait
    # for: with kopf's 5 s, every node heartbeat and every object of a storm or an initial
    # listing stayed in memory, untrimmed, for 5 s.
    settings.queueing.idle_timeout = WORKER_IDLE_SECONDS
    settings.networking.request_timeout = 60


def connection_info(cfg: Configuration) -> kopf.ConnectionInfo:
    """kopf's credentials, from the client configuration the operator's own calls use."""
    return kopf.ConnectionInfo(**credentials(cfg))


def listings(cache: Cache, namespaces: Sequence[str]) -> list[Listing]:
    """What the initial sync lists: each watched resource with its watch's own selectors,
    once per namespace watched (namespaced kinds) or cluster-wide."""
    where: list[str | None] = list(namespaces) or [None]
    namespaced = [
        (cache.runs, KIND, None, None),
        (cache.jobs, PYTORCHJOB_KIND, SERVER_LABEL_SELECTORS[JOBS], None),
        (cache.pods, "Pod", SERVER_LABEL_SELECTORS["pods"], None),
        (cache.workloads, "Workload", None, None),
        (cache.claims, "PersistentVolumeClaim", None, None),
        (cache.refusals, "Event", None, SERVER_FIELD_SELECTORS[EVENTS]),
    ]
    return [
        Listing(store, kind, ns, labels, fields)
        for store, kind, labels, fields in namespaced
        for ns in where
    ] + [Listing(cache.nodes, "Node", None)]


def register(
    registry: kopf.OperatorRegistry, runner: Runner, namespaces: Sequence[str] = ()
) -> None:
    """Register the handlers on ``registry`` (never the global one: tests build many).
    ``namespaces``: those watched (none: every namespace)."""

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        # The operator's own client configuration (--kubeconfig, KUBECONFIG or in-cluster),
        # so kopf's watches and the operator's calls reach one cluster as one identity.
        return connection_info(runner.kube.api.configuration)

    @kopf.on.startup(registry=registry)
    async def sync_caches(**_: Any) -> None:
        runner.start_sync(listings(runner.cache, namespaces))

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await runner.shutdown()

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def trainingrun_event(
        *, type: str, body: kopf.Body, name: str, namespace: str | None, **_: Any
    ) -> None:
        assert namespace is not None  # TrainingRuns are namespaced
        if type == "DELETED":
            runner.cache.runs.delete(body)
            runner.forget(namespace, name)
        else:
            runner.cache.runs.put(body)
            runner.ensure(namespace, name)

    _register_references(registry, runner)
    _register_children(registry, runner)


# No kopf index anywhere: one would make kopf hold every listed object's event of every
# kind until all indexed kinds are listed (initial_sync says why). Each handler files the
# event in its store first, then acts on what the store keeps.


def _register_references(registry: kopf.OperatorRegistry, runner: Runner) -> None:
    """Watches of what a run references or is refused for: Kueue Workloads, claims, the
    training operator's FailedCreatePod events."""
    cache = runner.cache

    # Kueue's Workloads (runs with spec.queueName). Where Kueue is not installed kopf
    # serves no such resource and the store stays empty, as the API would answer.
    @kopf.on.event(KUEUE_GROUP, KUEUE_VERSION, "workloads", registry=registry)
    async def workload_event(*, type: str, body: kopf.Body, **_: Any) -> None:
        _file(cache.workloads, type, body)

    @kopf.on.event("persistentvolumeclaims", registry=registry)
    async def claim_event(*, type: str, body: kopf.Body, **_: Any) -> None:
        _file(cache.claims, type, body)

    @kopf.on.event(*EVENTS, registry=registry)
    async def refusal_event(*, type: str, body: kopf.Body, **_: Any) -> None:
        _file(cache.refusals, type, body)
        if type != "DELETED":
            # A refusal ends the run (InvalidSpec): look at its run now, not at the resync.
            for owner in cache.jobs_owning(body):
                runner.wake(*owner)


def _file(store: Store, type: str | None, body: kopf.Body) -> None:
    """Keep a watch event's object in ``store``, or its deletion."""
    if type == "DELETED":
        store.delete(body)
    else:
        store.put(body)


def _register_children(registry: kopf.OperatorRegistry, runner: Runner) -> None:
    """Watches of what a run is made of or runs on: pods, nodes, PyTorchJobs."""

    @kopf.on.event("pods", labels={LABEL_RUN: kopf.PRESENT}, registry=registry)
    async def pod_event(
        *, type: str, body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
    ) -> None:
        assert namespace is not None
        run = str(labels[LABEL_RUN])
        _file(runner.cache.pods, type, body)
        # Remember every state, not only deletions: an evicted pod can be deleted and
        # replaced before the reconcile it woke lists pods, and its last state (node,
        # DisruptionTarget) is what names the signal.
        runner.memory.remember_pod(namespace, run, runner.cache.pods.as_kept(body))
        runner.wake(namespace, run)

    @kopf.on.event("nodes", registry=registry)
    async def node_event(*, type: str, body: kopf.Body, name: str, **_: Any) -> None:
        _file(runner.cache.nodes, type, body)
        # The kept node, not the event: what the memory holds (labels, taints) then shares
        # the store's strings instead of keeping the event's copies, one set per node.
        kept = runner.cache.nodes.as_kept(body)
        change = runner.memory.observe_node(kept, deleted=type == "DELETED")
        woken = runner.cache.runs_on(name) if change.matters else set()
        if change.opened:
            # A gang waiting for capacity is created as soon as it fits, not at the next
            # poll (capacity_poll_seconds): a replacement node joining is the common case.
            woken |= runner.cache.runs_waiting_for_capacity()
        for namespace, run in woken:
            runner.wake(namespace, run)

    @kopf.on.event(
        PYTORCHJOB_GROUP,
        PYTORCHJOB_VERSION,
        PYTORCHJOB_PLURAL,
        labels={LABEL_RUN: kopf.PRESENT},
        registry=registry,
    )
    async def job_event(
        *, type: str, body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
    ) -> None:
        _file(runner.cache.jobs, type, body)
        runner.wake(str(namespace), str(labels[LABEL_RUN]))
