"""Test doubles around moto's server: seeded spot price history, an error-injecting proxy,
a controllable clock.

moto answers DescribeSpotPriceHistory with one constant price per zone, one fixed
timestamp and no pagination, so :class:`SpotHistory` replaces that one responder (inside
the in-process moto server) with AWS's documented behaviour: filters, the price in effect
at StartTime, newest first, MaxResults/NextToken pages. Requests still go through boto3,
HTTP on loopback, moto's request parsing and XML serialisation, and botocore's parser.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from moto.core.responses import ActionResult
from moto.ec2.responses.spot_instances import SpotInstances

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def rec(
    itype: str, zone: str, price: str, ts: datetime, product: str = "Linux/UNIX"
) -> dict[str, Any]:
    """One AWS-shaped SpotPriceHistory entry."""
    return {
        "InstanceType": itype,
        "AvailabilityZone": zone,
        "ProductDescription": product,
        "SpotPrice": price,
        "Timestamp": ts,
    }


@dataclass
class SpotHistory:
    """Records served by the patched responder, and the parameters of each request."""

    records: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def respond(self, region: str, params: dict[str, Any]) -> dict[str, Any]:
        self.requests.append({**params, "Region": region})
        types = set(params.get("InstanceTypes") or [])
        products = set(params.get("ProductDescriptions") or [])
        start = params.get("StartTime")
        start = start.replace(tzinfo=UTC) if start is not None and start.tzinfo is None else start
        match = [
            r
            for r in self.records
            if r["AvailabilityZone"].startswith(region)
            and (not types or r["InstanceType"] in types)
            and (not products or r["ProductDescription"] in products)
        ]
        if start is not None:
            # AWS: prices changed inside the window, plus the last change before it.
            inside = [r for r in match if r["Timestamp"] >= start]
            before: dict[tuple[str, str, str], dict[str, Any]] = {}
            for r in match:
                key = (r["InstanceType"], r["AvailabilityZone"], r["ProductDescription"])
                if r["Timestamp"] < start and (
                    key not in before or r["Timestamp"] > before[key]["Timestamp"]
                ):
                    before[key] = r
            match = inside + list(before.values())
        match.sort(key=lambda r: r["Timestamp"], reverse=True)
        offset = int(params.get("NextToken") or 0)
        size = int(params.get("MaxResults") or 1000)
        page: dict[str, Any] = {"SpotPriceHistory": match[offset : offset + size]}
        if offset + size < len(match):
            page["NextToken"] = str(offset + size)
        return page


@contextmanager
def serve_spot_history(history: SpotHistory) -> Iterator[SpotHistory]:
    """Patch moto's DescribeSpotPriceHistory responder to serve ``history``."""

    def responder(self: SpotInstances) -> ActionResult:
        return ActionResult(history.respond(self.region, self._get_params()))

    original = SpotInstances.describe_spot_price_history
    SpotInstances.describe_spot_price_history = responder  # type: ignore[method-assign]
    try:
        yield history
    finally:
        SpotInstances.describe_spot_price_history = original  # type: ignore[method-assign]


def ec2_error(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
        f"<Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        "<RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>"
    ).encode()


class ErrorProxy:
    """Loopback HTTP proxy in front of moto: answers queued errors first, then forwards.

    ``always`` set: every request gets that error (a throttle that never lets up).
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.queue: list[tuple[int, str, str]] = []
        self.always: tuple[int, str, str] | None = None
        self.actions: list[str] = []
        self.errors_sent = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                action = parse_qs(body.decode()).get("Action", ["?"])[0]
                with proxy._lock:
                    proxy.actions.append(action)
                    err = proxy.always or (proxy.queue.pop(0) if proxy.queue else None)
                    proxy.errors_sent += err is not None
                if err is not None:
                    status, code, message = err
                    payload = ec2_error(code, message)
                    self.send_response(status)
                    self.send_header("Content-Type", "text/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=10)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request("POST", self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> ErrorProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class FakeClock:
    """An aware UTC clock that moves only when told to."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
