"""Each of the operator's API requests is timed and counted under client-go's names
(client_metrics), by verb and by the answer's code, ``<error>`` when none came."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry
from urllib3.exceptions import HTTPError

from spotrun_operator.telemetry.client_metrics import NO_ANSWER, ClientMetrics, MeasuredApiClient

VERSION = {
    **dict.fromkeys(("buildDate", "compiler", "gitCommit", "gitTreeState", "platform"), "-"),
    **{"gitVersion": "v1.34.0", "goVersion": "go1.24", "major": "1", "minor": "34"},
}


class Apiserver(BaseHTTPRequestHandler):
    """Answers /version with 200 and anything else with the apiserver's 404 Status."""

    def do_GET(self) -> None:
        found = self.path.rstrip("/") == "/version"
        body = VERSION if found else {"kind": "Status", "code": 404}
        data = json.dumps(body).encode()
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def apiserver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Apiserver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def measured(host: str, registry: CollectorRegistry) -> client.ApiClient:
    cfg = client.Configuration()
    cfg.host = f"http://{host}"
    cfg.retries = False
    return MeasuredApiClient(cfg, ClientMetrics(registry))


def count(reg: CollectorRegistry, host: str, code: str, method: str = "GET") -> float:
    labels = {"code": code, "method": method, "host": host}
    return reg.get_sample_value("rest_client_requests_total", labels) or 0.0


def test_answers_are_counted_by_code_and_timed_by_verb(apiserver: str) -> None:
    reg = CollectorRegistry()
    api = measured(apiserver, reg)
    assert client.VersionApi(api).get_code().git_version == "v1.34.0"
    with pytest.raises(ApiException) as refused:
        client.CoreV1Api(api).read_namespace("missing")
    assert refused.value.status == 404
    assert count(reg, apiserver, "200") == 1 and count(reg, apiserver, "404") == 1
    timed = reg.get_sample_value(
        "rest_client_request_duration_seconds_count", {"verb": "GET", "host": apiserver}
    )
    assert timed == 2


def test_a_request_with_no_answer_counts_as_an_error() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{s.getsockname()[1]}"
    reg = CollectorRegistry()
    with pytest.raises((ApiException, HTTPError)):
        client.VersionApi(measured(host, reg)).get_code()
    assert count(reg, host, NO_ANSWER) == 1 and count(reg, host, "200") == 0
