"""Spot prices without waiting on AWS: a :class:`~spotrun_operator.money.pricing.PriceBook`
asked on a thread of its own, so a hanging endpoint never stalls a reconcile."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from types import MappingProxyType

from spotrun_operator.money.aws_prices import REASON_UNREACHABLE, PricingFailure
from spotrun_operator.money.pricing import PriceBook, PriceSnapshot


class BackgroundPriceBook:
    """A :class:`PriceBook` whose AWS requests never hold a caller up for long.

    Snapshots are taken on a thread of their own. The caller that asks for one waits for
    it at most ``wait_seconds``; callers arriving while it is still running do not wait at
    all. Whoever does not get the fresh snapshot gets the previous one of the same
    instance types, or, before AWS ever answered, table estimates with
    PricingAvailable=False (``EndpointUnreachable``, "no answer ... yet"). Without this, a
    hanging endpoint would stall every reconcile (interruption notices included) for up
    to ``max_attempts`` x ``read_timeout_seconds`` at each retry.
    """

    def __init__(self, book: PriceBook, wait_seconds: float = 2.0) -> None:
        self.book = book
        self.wait_seconds = wait_seconds
        self._lock = threading.Lock()
        self._running: dict[tuple[str, ...], Future[PriceSnapshot]] = {}
        self._last: dict[tuple[str, ...], PriceSnapshot] = {}

    def snapshot(self, instance_types: Iterable[str]) -> PriceSnapshot:
        key = tuple(dict.fromkeys(instance_types))
        with self._lock:
            future = self._running.get(key)
            last = self._last.get(key)
            if future is None or future.done():
                future = self._running[key] = self._start(key)
            elif last is not None:
                return last  # another caller already waits for this answer
        try:
            return future.result(timeout=self.wait_seconds)
        except FutureTimeout:
            return last if last is not None else self._unanswered(key)

    def _start(self, key: tuple[str, ...]) -> Future[PriceSnapshot]:
        future: Future[PriceSnapshot] = Future()

        def take() -> None:
            try:
                snap = self.book.snapshot(key)
            except BaseException as exc:  # handed to whoever waits
                future.set_exception(exc)
                return
            with self._lock:
                self._last[key] = snap
            future.set_result(snap)

        # A daemon thread: a request hanging on AWS must not hold the process at exit.
        threading.Thread(target=take, name="spot-prices", daemon=True).start()
        return future

    def _unanswered(self, key: tuple[str, ...]) -> PriceSnapshot:
        cfg = self.book.config
        env = os.environ
        region = cfg.region or env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or None
        failure = PricingFailure(
            REASON_UNREACHABLE,
            f"DescribeSpotPriceHistory in {region or '(no region)'}: no answer after "
            f"{self.wait_seconds:g}s yet (still asking)",
        )
        return PriceSnapshot(
            taken_at=self.book.now(),
            region=region,
            instance_types=key,
            spot=MappingProxyType({}),
            fetched_at=MappingProxyType({}),
            errors=MappingProxyType(dict.fromkeys(key, failure)),
            on_demand_table=MappingProxyType(cfg.on_demand_table()),
            spot_fraction=cfg.spot_fraction,
        )
