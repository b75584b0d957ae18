"""The watch memory, the kopf wiring and the command line (no cluster)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref
from typing import Any

import kopf
import pytest
from kubernetes.client import ApiClient
from prometheus_client import CollectorRegistry

from spotrun_operator import handlers, main
from spotrun_operator.facts.common import LABEL_RUN
from spotrun_operator.facts.config import OperatorConfig, from_env, with_overrides
from spotrun_operator.kubeio.kube import Kube
from spotrun_operator.money.cost import Price
from spotrun_operator.runner import Runner
from spotrun_operator.telemetry.metrics import Metrics
from spotrun_operator.watching.memory import Memory


def node(
    name: str, taints: tuple[str, ...] = (), ready: str = "True", message: str = ""
) -> dict[str, Any]:
    ready_condition = {
        "type": "Ready",
        "status": ready,
        "lastTransitionTime": "2026-05-01T12:00:00Z",
        "message": message,
    }
    return {
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": "us-east-1a"}},
        "spec": {"taints": [{"key": t, "effect": "NoSchedule"} for t in taints]},
        "status": {"conditions": [ready_condition]},
    }


def test_memory_wakes_only_on_what_matters() -> None:
    m = Memory()
    assert not m.observe_node(node("n1"), deleted=False).matters  # a healthy node: nothing to do
    assert not m.observe_node(node("n1"), deleted=False).matters  # a heartbeat
    itn = ("aws-node-termination-handler/spot-itn",)
    assert m.observe_node(node("n1", itn), deleted=False).matters
    assert m.interrupted_nodes() == ["n1"]
    assert m.observe_node(node("n1", itn), deleted=True).matters
    last = m.nodes()["n1"]
    assert not last.exists and last.taints == itn and last.zone == "us-east-1a"
    assert m.observe_node(node("n2", ready="Unknown"), deleted=False).matters


def test_a_node_opens_capacity_when_it_may_take_a_pod_it_could_not_before() -> None:
    """What wakes the runs waiting for capacity: a node that joins schedulable, turns
    Ready, is uncordoned or advertises its GPUs; not a heartbeat, a cordon, a node going
    away or one still joining."""
    m = Memory()
    assert not m.observe_node(node("n1", ready="False"), deleted=False).opened  # joining
    assert m.observe_node(node("n1"), deleted=False).opened  # Ready now
    assert not m.observe_node(node("n1"), deleted=False).opened  # a heartbeat
    cordoned = node("n1")
    cordoned["spec"]["unschedulable"] = True
    assert not m.observe_node(cordoned, deleted=False).opened
    assert m.observe_node(node("n1"), deleted=False).opened  # uncordoned
    gpus = node("n1")
    gpus["status"]["allocatable"] = {"nvidia.com/gpu": "8"}
    assert m.observe_node(gpus, deleted=False).opened  # the device plugin registered
    assert m.observe_node(node("n2"), deleted=False).opened  # joined Ready at once
    itn = node("n2", ("aws-node-termination-handler/spot-itn",))
    change = m.observe_node(itn, deleted=False)
    assert change.matters and not change.opened  # going away: wakes the runs on it
    assert not m.observe_node(node("n2"), deleted=True).opened  # deleted
    assert not m.observe_node(
        node("n3", ready="False", message="node is shutting down"), deleted=False
    ).opened


def test_memory_avoids_nodes_that_are_going_not_nodes_that_are_joining() -> None:
    """A next attempt must not land on a node that is shutting down (the kubelet's own
    message) or being deleted, even before the node lifecycle controller taints it; a
    node still joining or missing a heartbeat (NotReady for another reason) is capacity,
    and a deleted one with no taint takes no pods."""
    m = Memory()
    m.observe_node(node("down", ready="False", message="node is shutting down"), False)
    deleting = node("deleting")
    deleting["metadata"]["deletionTimestamp"] = "2026-05-01T12:00:00Z"
    m.observe_node(deleting, deleted=False)
    m.observe_node(node("silent", ready="Unknown"), deleted=False)
    m.observe_node(
        node("joining", ready="False", message="container runtime network not ready"), False
    )
    m.observe_node(node("healthy"), deleted=False)
    m.observe_node(node("gone"), deleted=True)
    assert m.interrupted_nodes() == ["deleting", "down"]
    m.observe_node(node("down"), deleted=False)  # the shutdown was cancelled
    assert m.interrupted_nodes() == ["deleting"]


def test_memory_snapshots_the_nodes_again_only_when_one_changed() -> None:
    m = Memory()
    itn = ("aws-node-termination-handler/spot-itn",)
    m.observe_node(node("n1"), deleted=False)
    m.observe_node(node("n2", itn), deleted=False)
    first = m.nodes()
    m.observe_node(node("n1"), deleted=False)  # a heartbeat: the same snapshot
    assert m.nodes() is first
    m.observe_node(node("n2"), deleted=False)  # the taint is gone
    assert m.nodes() is not first and m.nodes()["n2"].taints == ()
    assert m.interrupted_nodes() == []
    m.observe_node(node("n1", itn), deleted=True)  # deleted while tainted: still avoided
    assert m.interrupted_nodes() == ["n1"] and not m.nodes()["n1"].exists


def test_memory_keeps_the_last_state_of_each_pod_per_run_and_announces_once() -> None:
    m = Memory()
    m.remember_pod("ml", "llm", {"metadata": {"uid": "u1", "name": "p"}, "status": {}})
    evicted = {
        "metadata": {"uid": "u1", "name": "p"},
        "status": {"conditions": [{"type": "DisruptionTarget", "status": "True"}]},
    }
    m.remember_pod("ml", "llm", evicted)
    assert m.seen_pods("ml", "llm") == [evicted] and m.seen_pods("ml", "other") == []
    m.forget_run("ml", "llm")
    assert m.seen_pods("ml", "llm") == []
    assert m.first_time("k") and not m.first_time("k")


class _FakeKube:
    """observe()'s reads, answered from fixed objects."""

    def __init__(self, pods: list[dict[str, Any]], nodes: dict[str, dict[str, Any]]) -> None:
        self.pods, self.nodes = pods, nodes

    def list_jobs(self, namespace: str, run: str, owner_uid: str) -> dict[int, Any]:
        return {}

    def list_pods(self, namespace: str, run: str) -> list[dict[str, Any]]:
        return self.pods

    def get_node(self, name: str) -> dict[str, Any] | None:
        return self.nodes.get(name)

    def missing(self, namespace: str, refs: Any) -> list[str]:
        return []

    def get_workload(self, namespace: str, job_uid: str) -> dict[str, Any] | None:
        return None

    def pod_refusal(self, namespace: str, job: Any) -> Any:
        return None


def test_observe_keeps_the_last_state_of_pods_a_fresh_list_no_longer_has() -> None:
    """An evicted pod deleted and replaced before the reconcile lists pods still names its
    node (and so the node's interruption taint) through the watch's last state."""
    from spotrun_operator.watching.observe import observe

    evicted = {"metadata": {"uid": "old", "name": "r-a1-worker-0"}, "spec": {"nodeName": "spot-1"}}
    replacement = {"metadata": {"uid": "new", "name": "r-a1-worker-0"}, "spec": {}}
    node = {
        "metadata": {"name": "spot-1", "labels": {}},
        "spec": {
            "taints": [{"key": "aws-node-termination-handler/spot-itn", "effect": "NoSchedule"}]
        },
        "status": {},
    }
    run = {"metadata": {"name": "r", "namespace": "ml", "uid": "ru"}, "spec": {}}
    obs = observe(
        _FakeKube([replacement], {"spot-1": node}),
        run,
        remembered_nodes={},
        seen_pods=[evicted, replacement],
        interrupted_nodes=[],
    )
    assert [p["metadata"]["uid"] for p in obs.deleted_pods] == ["old"]
    assert "aws-node-termination-handler/spot-itn" in obs.nodes["spot-1"].taints


def test_memory_is_bounded_in_time() -> None:
    old = Memory(ttl_seconds=-1)  # everything is already too old: pruned on each write
    old.observe_node(node("gone", ("karpenter.sh/disrupted",)), deleted=True)
    old.observe_node(node("n1", ("karpenter.sh/disrupted",)), deleted=False)
    # A deleted node is forgotten after the ttl; a live one however long it goes unchanged.
    assert set(old.nodes()) == {"n1"}
    small = Memory(max_items=1)
    small.observe_node(node("n1", ("karpenter.sh/disrupted",)), deleted=False)
    small.observe_node(node("n2", ("karpenter.sh/disrupted",)), deleted=False)
    assert set(small.nodes()) == {"n2"}


def test_handlers_register_on_a_private_registry() -> None:
    registry = kopf.OperatorRegistry()
    kube = Kube(ApiClient())
    runner = Runner(kube=kube, cfg=OperatorConfig(), metrics=Metrics(CollectorRegistry()))
    handlers.register(registry, runner)
    # The operator's own writes land in the caches its reconciles read.
    assert kube.cache is runner.cache
    # No kopf index: kopf would hold every listed object's event, of every kind, until
    # all indexed kinds were listed (initial_sync.py gives the readiness instead).
    assert not registry._indexing.get_all_handlers()
    watched = {h.id.rsplit(".", 1)[-1] for h in registry._watching.get_all_handlers()}
    assert watched == {
        "trainingrun_event", "job_event", "pod_event", "node_event", "workload_event",
        "claim_event", "refusal_event",
    }  # fmt: skip
    settings = kopf.OperatorSettings()
    handlers.configure(settings)
    assert settings.persistence.finalizer.startswith("spotrun.dev/")
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    # kopf's diff base serves changing and spawning handlers only; with none registered,
    # building it (a deep copy of every watch event) is skipped.
    assert isinstance(settings.persistence.diffbase_storage, handlers.NoDiffBase)
    assert not registry._changing.get_all_handlers()
    assert not registry._spawning.get_all_handlers()
    body = kopf.Body({"metadata": {"name": "r"}, "spec": {"nodes": 2}})
    assert settings.persistence.diffbase_storage.build(body=body) == {}
    assert settings.persistence.diffbase_storage.fetch(body=body) is None
    assert not settings.posting.enabled
    # kopf's per-object workers hold their last raw event while idle: they must not linger.
    assert settings.queueing.idle_timeout == handlers.WORKER_IDLE_SECONDS < 1.0
    runner.pool.shutdown()


def test_a_runs_loop_keeps_nothing_of_the_event_that_started_it() -> None:
    """kopf calls a handler in a context that holds the watch event it handles (the cause,
    the whole parsed body); the run's loop that handler starts lives as long as the run,
    so it must not keep a copy of that context."""

    class WatchEvent:
        pass

    cause: contextvars.ContextVar[WatchEvent] = contextvars.ContextVar("cause")
    metrics = Metrics(CollectorRegistry())
    runner = Runner(kube=Kube(ApiClient()), cfg=OperatorConfig(), metrics=metrics)
    forever = asyncio.Event()

    async def idle_loop(_key: tuple[str, str]) -> None:
        await forever.wait()

    runner._loop = idle_loop  # type: ignore[method-assign,assignment]

    async def handler() -> weakref.ref[WatchEvent]:
        event = WatchEvent()
        cause.set(event)  # as kopf's invocation does for every handler
        runner.ensure("ns", "r")
        return weakref.ref(event)

    async def scenario() -> None:
        handled = await asyncio.create_task(handler())
        await asyncio.sleep(0)  # the handler's task finishes its last step
        gc.collect()
        task = runner._tasks[("ns", "r")]
        assert not task.done()
        assert handled() is None
        await runner.shutdown()

    asyncio.run(scenario())


def watch_handler(registry: kopf.OperatorRegistry, name: str) -> Any:
    return next(
        h.fn for h in registry._watching.get_all_handlers() if h.id.rsplit(".", 1)[-1] == name
    )


def test_a_node_event_wakes_the_runs_with_pods_on_that_node() -> None:
    """A tainted or deleted node wakes the runs bound to it at once (through the pods
    store's node index): when that lookup found nothing, a silent instance loss waited
    out the lost-node grace (27 s at p50 in bench/operator_scale.py)."""
    registry = kopf.OperatorRegistry()
    runner = Runner(
        kube=Kube(ApiClient()), cfg=OperatorConfig(), metrics=Metrics(CollectorRegistry())
    )
    handlers.register(registry, runner)
    pod_event = watch_handler(registry, "pod_event")
    node_event = watch_handler(registry, "node_event")
    pod: Any = {
        "metadata": {"name": "r-a1-worker-0", "namespace": "ml", "uid": "u", "resourceVersion": "1",
                     "labels": {LABEL_RUN: "r"}},
        "spec": {"nodeName": "spot-1"},
    }  # fmt: skip

    async def scenario() -> None:
        on_it, elsewhere = asyncio.Event(), asyncio.Event()
        runner._wakers[("ml", "r")], runner._wakers[("ml", "other")] = on_it, elsewhere
        labels = pod["metadata"]["labels"]
        await pod_event(type=None, body=kopf.Body(pod), namespace="ml", labels=labels)
        on_it.clear()
        healthy: Any = node("spot-1")
        healthy["metadata"]["resourceVersion"] = "2"
        await node_event(type=None, body=kopf.Body(healthy), name="spot-1")
        assert not on_it.is_set()  # nothing changed that matters
        tainted: Any = node("spot-1", ("aws-node-termination-handler/spot-itn",))
        tainted["metadata"]["resourceVersion"] = "3"
        await node_event(type="MODIFIED", body=kopf.Body(tainted), name="spot-1")
        assert on_it.is_set() and not elsewhere.is_set()
        assert runner.cache.nodes.get("", "spot-1") is not None

    asyncio.run(scenario())
    runner.pool.shutdown()


def test_a_node_that_joins_wakes_the_runs_waiting_for_capacity() -> None:
    """A run whose next gang waits for a node (CapacityAvailable False) looks again when a
    node joins or turns Ready, not at its next capacity poll; a run that is placed does
    not, and neither does a heartbeat of the node."""
    registry = kopf.OperatorRegistry()
    runner = Runner(
        kube=Kube(ApiClient()), cfg=OperatorConfig(), metrics=Metrics(CollectorRegistry())
    )
    handlers.register(registry, runner)
    node_event = watch_handler(registry, "node_event")

    def run(name: str, available: str) -> dict[str, Any]:
        conditions = [{"type": "CapacityAvailable", "status": available}]
        meta = {"name": name, "namespace": "ml", "uid": name, "resourceVersion": "1"}
        return {"kind": "TrainingRun", "metadata": meta, "status": {"conditions": conditions}}

    runner.cache.runs.put(run("waits", "False"))
    runner.cache.runs.put(run("placed", "True"))

    async def scenario() -> None:
        waiting, placed = asyncio.Event(), asyncio.Event()
        runner._wakers[("ml", "waits")], runner._wakers[("ml", "placed")] = waiting, placed
        # Joining (NotReady), Ready, then a heartbeat: only Ready wakes the waiting run.
        for rv, ready, wakes in (("1", "False", False), ("2", "True", True), ("3", "True", False)):
            body: Any = node("spot-new", ready=ready)
            body["metadata"]["resourceVersion"] = rv
            await node_event(type="MODIFIED", body=kopf.Body(body), name="spot-new")
            assert waiting.is_set() is wakes and not placed.is_set()
            waiting.clear()

    asyncio.run(scenario())
    runner.pool.shutdown()


def test_cli_flags_and_env_override_the_config() -> None:
    args = main.parse_args(
        [
            "-n",
            "a",
            "-n",
            "b",
            "--backoff-base-seconds",
            "1",
            "--restart-on-rebalance",
            "--replace-on-rebalance",
            "--pricing",
            "table",
        ]
    )
    assert args.namespace == ["a", "b"] and args.pricing == "table"
    assert args.replace_on_rebalance is True
    assert main.parse_args([]).replace_on_rebalance is None  # the config's default: off
    assert OperatorConfig().replace_on_rebalance is False
    cfg = from_env({"SPOTRUN_FAILURE_SETTLE_SECONDS": "7", "SPOTRUN_RESTART_ON_REBALANCE": "no"})
    assert cfg.failure_settle_seconds == 7.0 and cfg.restart_on_rebalance is False
    cfg = with_overrides(
        cfg,
        {
            "backoff_base_seconds": args.backoff_base_seconds,
            "restart_on_rebalance": args.restart_on_rebalance,
            "resync_seconds": None,
        },
    )
    assert cfg.backoff_base_seconds == 1.0 and cfg.restart_on_rebalance is True
    assert cfg.resync_seconds == OperatorConfig().resync_seconds


def test_default_metrics_port_is_the_charts() -> None:
    import yaml

    from spotrun_dev.paths import REPO_ROOT

    values = yaml.safe_load((REPO_ROOT / "charts" / "spotrun" / "values.yaml").read_text())
    assert main.parse_args([]).metrics_port == values["operator"]["metricsPort"] == 8000


def test_pricing_flags_build_the_price_book_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOTRUN_AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    monkeypatch.setenv("SPOTRUN_ON_DEMAND_PRICES", "p4d.24xlarge=30, g5.xlarge=1.1")
    args = main.parse_args(
        [
            "--on-demand-price",
            "p4d.24xlarge=31.5",
            "--on-demand-price=p9.huge=100",
            "--spot-fraction=0.4",
            "--price-refresh-seconds=120",
            "--aws-region=eu-west-1",
        ]
    )
    cfg = main.pricing_config(args)
    assert (cfg.endpoint_url, cfg.region) == ("http://127.0.0.1:5000", "eu-west-1")
    assert (cfg.spot_fraction, cfg.refresh_seconds) == (0.4, 120.0)
    # The flag wins over the environment; other types keep the built-in list prices.
    table = cfg.on_demand_table()
    assert (table["p4d.24xlarge"], table["g5.xlarge"], table["p9.huge"]) == (31.5, 1.1, 100.0)
    assert table["p5.48xlarge"] == 98.32
    prices, condition = main.table_prices(cfg)(["p4d.24xlarge"])
    assert condition is None
    assert prices["p4d.24xlarge"] == Price(0.4 * 31.5, 31.5)  # type: ignore[index]
    defaults = main.pricing_config(main.parse_args([]))
    assert (defaults.spot_fraction, defaults.refresh_seconds) == (0.35, 600.0)


@pytest.mark.parametrize("bad", ["p4d.24xlarge", "p4d.24xlarge=", "=3", "p4d.24xlarge=-1"])
def test_bad_on_demand_prices_are_refused(bad: str) -> None:
    with pytest.raises(SystemExit):
        main.parse_args(["--on-demand-price", bad])


def test_observe_leaves_out_pods_of_an_earlier_run_of_the_same_name() -> None:
    """A run deleted and created again under the same name: the old run's pods (one still
    terminating, one the watch remembers) are older than the new run, and never its own."""
    from spotrun_operator.watching.observe import observe

    def pod(uid: str, created: str) -> dict[str, Any]:
        meta = {"uid": uid, "name": "r-a1-worker-0", "creationTimestamp": created,
                "labels": {"spotrun.dev/run": "r", "spotrun.dev/attempt": "1"}}  # fmt: skip
        return {"metadata": meta, "spec": {"nodeName": "spot-1"}}

    old_live = pod("old-live", "2026-11-28T10:00:00Z")
    old_gone = pod("old-gone", "2026-11-28T10:00:00Z")
    new = pod("new", "2026-11-28T11:00:00Z")
    meta = {
        "name": "r",
        "namespace": "ml",
        "uid": "ru",
        "creationTimestamp": "2026-11-28T11:00:00Z",
    }
    obs = observe(
        _FakeKube([old_live, new], {}),
        {"metadata": meta, "spec": {}},
        remembered_nodes={},
        seen_pods=[old_gone, old_live, new],
        interrupted_nodes=[],
    )
    assert [p["metadata"]["uid"] for p in obs.pods] == ["new"]
    assert obs.deleted_pods == []
