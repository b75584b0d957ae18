"""The operator's own API requests, measured where every one of them passes.

Named and labelled as client-go names its REST client metrics (component-base's
``metrics/prometheus/restclient``), so dashboards written for Go controllers read them:

* ``rest_client_request_duration_seconds{verb, host}``: from sending a request to having
  its answer's status (client-go's buckets, 5 ms .. 60 s);
* ``rest_client_requests_total{code, method, host}``: requests by answer, ``<error>`` when
  none came (client-go's word for a transport error).

What a reconcile waits on the apiserver for, under load, shows here: the bench reads these
beside the workqueue's to tell queueing from slow writes. kopf's watches and its own
calls go through aiohttp, not this client, and are not counted.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Counter, Histogram

# client-go's requestLatency buckets (component-base metrics/prometheus/restclient).
REQUEST_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
# The code client-go counts a request under when no HTTP answer came back.
NO_ANSWER = "<error>"


class ClientMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            "rest_client_request_duration_seconds",
            "Request latency in seconds. Broken down by verb, and host.",
            ["verb", "host"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.results = Counter(
            "rest_client_requests_total",
            "Number of HTTP requests, partitioned by status code, method, and host.",
            ["code", "method", "host"],
            registry=registry,
        )

    def record(self, method: str, host: str, seconds: float, code: str) -> None:
        self.latency.labels(verb=method, host=host).observe(seconds)
        self.results.labels(code=code, method=method, host=host).inc()


class MeasuredApiClient(client.ApiClient):  # type: ignore[misc]  # kubernetes ships no type hints
    """The official client, each request timed into :class:`ClientMetrics`.

    ``call_api`` is where the generated client and the dynamic client both send a
    request and get its answer (an error status is an answer, turned into an exception
    only after), so no request goes uncounted and none is counted twice."""

    def __init__(self, configuration: client.Configuration, measured: ClientMetrics) -> None:
        super().__init__(configuration=configuration)
        self.measured = measured
        self.host = urlsplit(configuration.host).netloc or str(configuration.host)

    def call_api(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        code = NO_ANSWER
        try:
            answer = super().call_api(method, url, *args, **kwargs)
            code = str(answer.status)
            return answer
        except ApiException as exc:  # a client that raises on an error status
            code = str(exc.status) if exc.status else NO_ANSWER
            raise
        finally:
            self.measured.record(str(method), self.host, time.monotonic() - started, code)
