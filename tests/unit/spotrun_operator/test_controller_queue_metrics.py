"""The operator's own health in controller-runtime's and client-go's names."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from spotrun_operator.telemetry.queue_metrics import NAME, CacheCollector, QueueMetrics


def value(reg: CollectorRegistry, series: str, **labels: str) -> float:
    got = reg.get_sample_value(series, labels)
    assert got is not None, (series, labels)
    return got


def test_a_woken_run_is_queued_until_a_thread_picks_it_up() -> None:
    reg = CollectorRegistry()
    q = QueueMetrics(reg, workers=8)
    assert value(reg, "controller_runtime_max_concurrent_reconciles", controller=NAME) == 8
    first, second = q.queued(), q.queued()
    assert value(reg, "workqueue_depth", name=NAME) == 2
    assert value(reg, "workqueue_adds_total", name=NAME) == 2
    with q.working(first):
        assert value(reg, "workqueue_depth", name=NAME) == 1
        assert value(reg, "controller_runtime_active_workers", controller=NAME) == 1
    q.finished("acted")
    with pytest.raises(RuntimeError), q.working(second):
        raise RuntimeError("a reconcile that raised")
    q.finished("error")
    assert value(reg, "workqueue_depth", name=NAME) == 0
    assert value(reg, "controller_runtime_active_workers", controller=NAME) == 0
    assert value(reg, "workqueue_queue_duration_seconds_count", name=NAME) == 2
    assert value(reg, "controller_runtime_reconcile_time_seconds_count", controller=NAME) == 2
    assert value(reg, "controller_runtime_reconcile_total", controller=NAME, result="acted") == 1
    assert value(reg, "controller_runtime_reconcile_total", controller=NAME, result="error") == 1
    assert value(reg, "workqueue_retries_total", name=NAME) == 1


def test_cache_sync_and_sizes_are_read_at_scrape_time() -> None:
    reg = CollectorRegistry()
    synced, sizes = [False], {"Pod": 3}
    reg.register(CacheCollector(lambda: synced[0], lambda: sizes))
    assert value(reg, "spotrun_cache_synced") == 0
    assert value(reg, "spotrun_cache_objects", kind="Pod") == 3
    synced[0] = True
    sizes["Node"] = 2
    assert value(reg, "spotrun_cache_synced") == 1
    assert value(reg, "spotrun_cache_objects", kind="Node") == 2
