"""Inside the operator while runs recover, from its own /metrics scraped before and after a
storm: how long a woken run waited for a reconcile thread (``workqueue_queue_duration``),
how long a reconcile took (``controller_runtime_reconcile_time``), and how long each of its
API requests waited on the apiserver (``rest_client_request_duration``, by verb). Beside
the bench's phases (each seen from outside, in the API) these tell queueing in the
operator from a slow apiserver: what is left of a phase is the watch's delivery.

Quantiles are read from the histograms' buckets as Prometheus' ``histogram_quantile``
reads them (linear within a bucket), so they are as coarse as the buckets (the workqueue's
are client-go's, by tens); the means and the share over one second are exact."""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# (sample name, labels) -> value
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

QUEUE = "workqueue_queue_duration_seconds"
RECONCILE = "controller_runtime_reconcile_time_seconds"
REQUEST = "rest_client_request_duration_seconds"
REQUESTS = "rest_client_requests_total"
RESULTS = "controller_runtime_reconcile_total"


def scrape(port: int, host: str = "127.0.0.1") -> Samples:
    """Every sample of the operator's /metrics."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
        return parse(resp.read().decode())


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return out


@dataclass(frozen=True)
class Histogram:
    """One histogram's observations between two scrapes (its series summed)."""

    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), ascending
    total: float
    count: float

    def quantile(self, q: float) -> float | None:
        """``histogram_quantile(q, ...)``: linear within the bucket the rank falls in; the
        highest finite bound when it falls in +Inf."""
        if self.count <= 0:
            return None
        rank = q * self.count
        lower, below = 0.0, 0.0
        for bound, cumulative in self.buckets:
            if cumulative >= rank:
                if bound == float("inf"):
                    return lower
                inside = cumulative - below
                return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
            lower, below = bound, cumulative
        return lower

    def share_over(self, bound: float) -> float | None:
        """The fraction of observations above ``bound`` (one of the bucket bounds)."""
        at = dict(self.buckets).get(bound)
        if self.count <= 0 or at is None:
            return None
        return 1.0 - at / self.count

    def summary(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 4)

        return {
            "n": int(self.count),
            "mean": r(self.total / self.count) if self.count else None,
            "p50": r(self.quantile(0.5)),
            "p99": r(self.quantile(0.99)),
            "share_over_1s": r(self.share_over(1.0)),
        }


def histogram(before: Samples, after: Samples, metric: str, /, **labels: str) -> Histogram:
    """The observations of ``metric`` (every series whose labels include ``labels``) made
    between the two scrapes."""
    buckets: dict[float, float] = {}
    for (sample, lbls), value in after.items():
        have = dict(lbls)
        if sample == f"{metric}_bucket" and _has(have, labels):
            grown = value - before.get((sample, lbls), 0.0)
            bound = float(have["le"])
            buckets[bound] = buckets.get(bound, 0.0) + grown
    return Histogram(
        tuple(sorted(buckets.items())),
        counter(before, after, f"{metric}_sum", **labels),
        counter(before, after, f"{metric}_count", **labels),
    )


def _has(have: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(have.get(k) == v for k, v in labels.items())


def label_values(samples: Samples, name: str, label: str) -> list[str]:
    return sorted({dict(lbls)[label] for (n, lbls) in samples if n == name and label in dict(lbls)})


def counter(before: Samples, after: Samples, metric: str, /, **labels: str) -> float:
    """How much ``metric`` (every series whose labels include ``labels``) grew."""
    return sum(
        value - before.get((n, lbls), 0.0)
        for (n, lbls), value in after.items()
        if n == metric and _has(dict(lbls), labels)
    )


def inside_operator(before: Samples, after: Samples) -> dict[str, Any]:
    """What the operator's metrics say of the window between two scrapes."""
    requests: dict[str, Any] = {}
    for verb in label_values(after, f"{REQUEST}_count", "verb"):
        row = histogram(before, after, REQUEST, verb=verb).summary()
        if row["n"]:
            codes = {
                code: int(n)
                for code in label_values(after, REQUESTS, "code")
                if (n := counter(before, after, REQUESTS, method=verb, code=code))
            }
            requests[verb] = {**row, "codes": codes}
    return {
        "queue_wait": histogram(before, after, QUEUE).summary(),
        "reconcile": histogram(before, after, RECONCILE).summary(),
        "reconciles_by_result": {
            result: int(n)
            for result in label_values(after, RESULTS, "result")
            if (n := counter(before, after, RESULTS, result=result))
        },
        "requests": requests,
    }


def format_inside(row: Mapping[str, Any]) -> str:
    """A few lines for the printed report."""

    def line(what: str, h: Mapping[str, Any]) -> str:
        return (
            f"  {what:<22} n {h['n']:>6}  mean {h['mean']}  p50 {h['p50']}  p99 {h['p99']}  "
            f"over 1 s {h['share_over_1s']}"
        )

    lines = [
        line("queued (woken → picked)", row["queue_wait"]),
        line("reconcile", row["reconcile"]),
    ]
    lines += [line(f"{verb} request", h) for verb, h in row["requests"].items()]
    lines.append(f"  reconciles by result: {row['reconciles_by_result']}")
    return "\n".join(lines)
