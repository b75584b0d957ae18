"""Prometheus metrics of the trainer, on a registry the caller creates (never the global one)."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

CHECKPOINT_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


class TrainerMetrics:
    """The trainer's series; ``registry`` is required so nothing registers at import time."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.step = Gauge("spotrun_trainer_step", "Optimizer steps done.", registry=registry)
        self.loss = Gauge(
            "spotrun_trainer_loss", "Training loss of the last step.", registry=registry
        )
        self.samples_per_second = Gauge(
            "spotrun_trainer_samples_per_second",
            "Recent training throughput of the whole gang.",
            registry=registry,
        )
        self.checkpoint_seconds = Histogram(
            "spotrun_trainer_checkpoint_seconds",
            "Seconds from the start of a save to its commit.",
            buckets=CHECKPOINT_BUCKETS,
            registry=registry,
        )
        self.checkpoint_stall_seconds = Histogram(
            "spotrun_trainer_checkpoint_stall_seconds",
            "Seconds the training loop was blocked by a save.",
            buckets=CHECKPOINT_BUCKETS,
            registry=registry,
        )
        self.checkpoint_bytes = Gauge(
            "spotrun_trainer_checkpoint_bytes",
            "Size of the newest committed checkpoint.",
            registry=registry,
        )
        self.last_checkpoint_timestamp = Gauge(
            "spotrun_trainer_last_checkpoint_timestamp_seconds",
            "Unix time the newest checkpoint was committed.",
            registry=registry,
        )
        self._server: Any = None

    def observe_checkpoint(self, seconds: float, size: int, timestamp: float) -> None:
        self.checkpoint_seconds.observe(seconds)
        self.checkpoint_bytes.set(size)
        self.last_checkpoint_timestamp.set(timestamp)

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve /metrics; returns the bound port (useful with port 0)."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        bound: int = server.server_port
        log.info("metrics on :%d/metrics", bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
