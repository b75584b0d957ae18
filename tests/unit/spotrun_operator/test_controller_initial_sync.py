"""The caches' initial sync (initial_sync.py, Store.expect/confirm): no decision before
every store holds what its resource had at start, without a kopf index holding events."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import kopf
import pytest
from kubernetes.client import ApiClient
from prometheus_client import CollectorRegistry

from spotrun_operator import handlers
from spotrun_operator.facts.config import OperatorConfig
from spotrun_operator.kubeio.kube import Kube
from spotrun_operator.runner import Runner
from spotrun_operator.telemetry.metrics import Metrics
from spotrun_operator.watching import initial_sync
from spotrun_operator.watching.cache import Cache
from spotrun_operator.watching.initial_sync import Listing, sync_caches
from spotrun_operator.watching.store import Key, Store


def obj(name: str, rv: str, uid: str = "", ns: str = "ml") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": rv, "uid": uid or name}}


def listed(*names: str, ns: str = "ml") -> list[tuple[Key, str]]:
    return [((ns, n), n) for n in names]


def test_a_store_is_synced_once_every_listed_object_came() -> None:
    s = Store("Pod")
    s.put(obj("a", "1"))  # the watch was faster than the listing
    assert not s.synced and s.pending() is None  # nothing listed yet: never synced
    s.expect(listed("a", "b", "c"))
    assert s.pending() == 2 and not s.synced
    s.put(obj("x", "2"))  # created after the listing: not awaited
    s.put(obj("b", "3"))
    assert s.pending() == 1
    s.put(obj("c", "4"))
    assert s.synced


def test_an_empty_listing_is_synced_at_once() -> None:
    s = Store("Workload")
    s.expect([])
    assert s.synced


def test_a_seen_deletion_counts_off_the_object_it_is_about() -> None:
    s = Store("Pod")
    s.delete(obj("a", "5", uid="old"))  # a predecessor of the same name
    s.expect([(("ml", "a"), "new"), (("ml", "b"), "b")])
    assert s.pending() == 2  # the tombstone is another object's
    s.delete(obj("b", "6"))
    assert s.pending() == 1
    s.delete(obj("a", "7", uid="other"))  # yet another object's deletion
    assert s.pending() == 1
    s.delete(obj("a", "8", uid="new"))
    assert s.synced


def test_a_later_listing_drops_what_was_deleted_before_the_watch_listed() -> None:
    """Deleted between the operator's listing and the watch's own: no event ever comes.
    What a later listing still has is still awaited (the watch will bring it)."""
    s = Store("Pod")
    s.expect(listed("gone", "slow", "seen"))
    s.put(obj("seen", "1"))
    s.confirm(listed("slow", "seen", "new"))
    assert s.pending() == 1 and not s.synced
    s.confirm([(("ml", "slow"), "recreated")])  # a new object of that name: not the listed one
    assert s.synced


Lister = Callable[[Listing], list[tuple[Key, str]]]


def run_sync(
    listings: list[Listing], lister: Lister, act: Callable[[list[str]], Awaitable[None]]
) -> list[str]:
    """Run ``sync_caches`` with ``act`` (a coroutine function playing the watch) beside
    it; what was recorded, in order."""
    seen: list[str] = []

    async def scenario() -> None:
        task = asyncio.create_task(sync_caches(listings, lister, lambda: seen.append("synced")))
        await act(seen)
        await asyncio.wait_for(task, timeout=10)

    asyncio.run(scenario())
    return seen


def test_sync_waits_for_every_store_and_each_namespace_listing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(initial_sync, "POLL_SECONDS", 0.01)
    pods, nodes = Store("Pod"), Store("Node")
    keys = {
        ("Pod", "a"): listed("p1", ns="a"),
        ("Pod", "b"): listed("p2", ns="b"),
        ("Node", None): [(("", "n1"), "n1")],
    }
    listings = [
        Listing(pods, "Pod", "a", labels="spotrun.dev/run"),
        Listing(pods, "Pod", "b", labels="spotrun.dev/run"),
        Listing(nodes, "Node", None),
    ]

    async def watch(seen: list[str]) -> None:
        await asyncio.sleep(0.05)
        pods.put(obj("p1", "1", ns="a"))
        nodes.put({"metadata": {"name": "n1", "resourceVersion": "2", "uid": "n1"}})
        await asyncio.sleep(0.05)
        seen.append("before the last pod")
        pods.put(obj("p2", "3", ns="b"))

    seen = run_sync(listings, lambda lst: keys[(lst.kind, lst.namespace)], watch)
    assert seen == ["before the last pod", "synced"]


def test_a_stalled_store_is_listed_again_and_a_failed_listing_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(initial_sync, "POLL_SECONDS", 0.01)
    monkeypatch.setattr(initial_sync, "STALL_SECONDS", 0.05)
    monkeypatch.setattr(initial_sync, "RETRY_SECONDS", 0.01)
    pods = Store("Pod")
    answers: list[Any] = [RuntimeError("apiserver down"), listed("kept", "gone"), listed("kept")]
    calls = []

    def lister(listing: Listing) -> list[tuple[Key, str]]:
        calls.append(listing.kind)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return list(answer)

    async def watch(seen: list[str]) -> None:
        await asyncio.sleep(0.02)
        pods.put(obj("kept", "1"))  # "gone" was deleted before the watch listed

    assert run_sync([Listing(pods, "Pod", None)], lister, watch) == ["synced"]
    assert calls == ["Pod"] * 3 and pods.synced


def test_the_listings_use_the_watches_own_selectors_per_namespace() -> None:
    """The sync lists what kopf watches: the same selectors (handlers.configure), once
    per watched namespace for namespaced kinds, cluster-wide for nodes."""
    cache = Cache()
    settings = kopf.OperatorSettings()
    handlers.configure(settings)
    found = handlers.listings(cache, ["a", "b"])
    by_kind: dict[str, list[Listing]] = {}
    for listing in found:
        by_kind.setdefault(listing.kind, []).append(listing)
    assert {k: [x.namespace for x in v] for k, v in by_kind.items()} == {
        "TrainingRun": ["a", "b"],
        "PyTorchJob": ["a", "b"],
        "Pod": ["a", "b"],
        "Workload": ["a", "b"],
        "PersistentVolumeClaim": ["a", "b"],
        "Event": ["a", "b"],
        "Node": [None],
    }
    assert {listing.store for listing in found} == set(cache.all_stores())
    assert by_kind["Pod"][0].labels == settings.watching.label_selectors["pods"]
    assert by_kind["PyTorchJob"][0].labels == settings.watching.label_selectors[handlers.JOBS]
    assert by_kind["Event"][0].fields == settings.watching.field_selectors[handlers.EVENTS]
    assert [x.namespace for x in handlers.listings(cache, []) if x.kind == "Pod"] == [None]


def test_no_run_is_reconciled_before_the_caches_are_synced() -> None:
    runner = Runner(
        kube=Kube(ApiClient()), cfg=OperatorConfig(), metrics=Metrics(CollectorRegistry())
    )
    reconciled: list[str] = []

    def reconcile(namespace: str, name: str, queued: float | None = None) -> None:
        reconciled.append(name)  # None: the run is gone, its loop ends

    runner.reconcile = reconcile  # type: ignore[method-assign]

    async def scenario() -> None:
        runner.ensure("ml", "r")
        task = runner._tasks[("ml", "r")]
        await asyncio.sleep(0.2)
        assert reconciled == [] and not task.done()
        runner.start_sync([])  # nothing to list: synced at once
        await asyncio.wait_for(task, timeout=10)
        assert reconciled == ["r"] and runner.cache.synced.is_set()
        await runner.shutdown()

    asyncio.run(scenario())
