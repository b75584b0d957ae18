"""A local EC2 instance-metadata server for the spot-notice tests (a fixture), shared by the
unit tests of the poller and the trainer-process test."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from spotrun_trainer.preemption import SPOT_ACTION_PATH, TOKEN_PATH

NOTICE = {"action": "terminate", "time": "2026-11-21T08:22:00Z"}


@dataclass
class FakeIMDS:
    """Instance metadata: 404 until ``notice`` is set; optional IMDSv2 tokens."""

    url: str = ""
    notice: dict[str, Any] | None = None
    imdsv2: bool = True
    token: str = "tok-123"
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)


@pytest.fixture
def imds() -> Iterator[FakeIMDS]:
    state = FakeIMDS()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return None

        def _reply(self, code: int, body: bytes = b"") -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_PUT(self) -> None:
            state.requests.append(("PUT", self.path, None))
            if self.path == TOKEN_PATH and state.imdsv2:
                assert self.headers["X-aws-ec2-metadata-token-ttl-seconds"]
                self._reply(200, state.token.encode())
            else:
                self._reply(405)

        def do_GET(self) -> None:
            token = self.headers.get("X-aws-ec2-metadata-token")
            state.requests.append(("GET", self.path, token))
            if self.path != SPOT_ACTION_PATH:
                self._reply(404)
            elif state.imdsv2 and token != state.token:
                self._reply(401)
            elif state.notice is None:
                self._reply(404)
            else:
                self._reply(200, json.dumps(state.notice).encode())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
