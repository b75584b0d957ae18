"""The scale bench's view inside the operator (bench/operator_metrics.py): histograms
read between two scrapes as Prometheus reads them, from what prometheus_client exposes."""

from __future__ import annotations

import operator_metrics as om
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from spotrun_operator.telemetry.client_metrics import ClientMetrics
from spotrun_operator.telemetry.queue_metrics import QueueMetrics


def samples(registry: CollectorRegistry) -> om.Samples:
    """What ``om.scrape`` makes of the registry's /metrics text."""
    return om.parse(generate_latest(registry).decode())


def test_only_what_was_observed_between_the_scrapes_counts() -> None:
    reg = CollectorRegistry()
    h = Histogram("wait_seconds", "", ["name"], buckets=(0.1, 1.0, 10.0), registry=reg)
    for v in (5.0, 5.0, 5.0):  # before the window: must not count
        h.labels("q").observe(v)
    before = samples(reg)
    for v in (0.05, 0.05, 0.5, 2.0):
        h.labels("q").observe(v)
    h.labels("other").observe(0.05)
    got = om.histogram(before, samples(reg), "wait_seconds", name="q")
    assert got.count == 4 and got.total == pytest.approx(2.6)
    assert got.buckets == ((0.1, 2.0), (1.0, 3.0), (10.0, 4.0), (float("inf"), 4.0))
    # histogram_quantile: rank 2 of 4 is the top of the first bucket; rank 3.96 is 96 %
    # through the (1, 10] bucket.
    assert got.quantile(0.5) == pytest.approx(0.1)
    assert got.quantile(0.99) == pytest.approx(1.0 + 9.0 * 0.96)
    assert got.share_over(1.0) == pytest.approx(0.25)
    both = om.histogram(before, samples(reg), "wait_seconds")
    assert both.count == 5


def test_a_rank_in_the_inf_bucket_reads_as_the_highest_bound() -> None:
    reg = CollectorRegistry()
    h = Histogram("x_seconds", "", buckets=(1.0,), registry=reg)
    before = samples(reg)
    h.observe(30.0)
    got = om.histogram(before, samples(reg), "x_seconds")
    assert got.quantile(0.99) == 1.0 and got.share_over(1.0) == 1.0
    assert om.histogram(samples(reg), samples(reg), "x_seconds").summary()["mean"] is None


def test_the_operators_queue_reconcile_and_requests_are_read_apart() -> None:
    reg = CollectorRegistry()
    queue, client = QueueMetrics(reg, workers=2), ClientMetrics(reg)
    client.record("PATCH", "h:1", 9.0, "200")  # before the window
    before = samples(reg)
    with queue.working(queue.queued() - 2.0):  # waited two seconds for a thread
        client.record("PATCH", "h:1", 0.3, "200")
        client.record("PATCH", "h:1", 0.2, "409")
        client.record("DELETE", "h:1", 0.02, "200")
    queue.finished("acted")
    got = om.inside_operator(before, samples(reg))
    assert got["queue_wait"]["n"] == 1 and got["queue_wait"]["mean"] == pytest.approx(2.0, 0.01)
    assert got["queue_wait"]["share_over_1s"] == 1.0
    assert got["reconcile"]["n"] == 1
    assert got["reconciles_by_result"] == {"acted": 1}
    assert set(got["requests"]) == {"DELETE", "PATCH"}
    patch = got["requests"]["PATCH"]
    assert patch["n"] == 2 and patch["mean"] == pytest.approx(0.25)
    assert patch["codes"] == {"200": 1, "409": 1}
    assert "PATCH request" in om.format_inside(got)
