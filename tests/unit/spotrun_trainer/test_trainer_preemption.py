"""SIGTERM guard and the EC2 spot-notice poller, against a local instance-metadata server."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from trainer_helpers import Trainer, committed, poll_until, read_events, single_cmd

from spotrun_trainer import contract
from spotrun_trainer.checkpoint import verify
from spotrun_trainer.preemption import SPOT_ACTION_PATH, TOKEN_PATH, SpotNoticePoller, StopGuard
from spotrun_trainer.testhooks import ENV_PAUSE_AT_STEP

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


@pytest.mark.parametrize("imdsv2", [True, False])
def test_poll_once_reads_notice_with_or_without_token(imds: FakeIMDS, imdsv2: bool) -> None:
    imds.imdsv2 = imdsv2
    poller = SpotNoticePoller(lambda n: None, endpoint=imds.url, interval=0.05)
    assert poller.poll_once() is None  # 404: no interruption scheduled
    imds.notice = NOTICE
    assert poller.poll_once() == NOTICE
    gets = [r for r in imds.requests if r[0] == "GET"]
    assert all(tok == ("tok-123" if imdsv2 else None) for _, _, tok in gets)
    puts = [r for r in imds.requests if r[0] == "PUT"]
    assert len(puts) == 1, "token fetched once and cached (or IMDSv1 remembered)"


def test_poller_calls_back_once_when_the_notice_appears(imds: FakeIMDS) -> None:
    seen: list[dict[str, Any]] = []
    poller = SpotNoticePoller(seen.append, endpoint=imds.url, interval=0.05).start()
    try:
        poll_until(lambda: len([r for r in imds.requests if r[0] == "GET"]) >= 2, 30, "polls")
        assert seen == []
        imds.notice = NOTICE
        poll_until(lambda: seen == [NOTICE], 30, "the notice callback")
    finally:
        poller.stop()
    assert seen == [NOTICE]


def test_poller_survives_an_unreachable_endpoint() -> None:
    poller = SpotNoticePoller(lambda n: None, endpoint="http://127.0.0.1:9", interval=0.05,
                              timeout=0.5)  # fmt: skip
    with pytest.raises(OSError):
        poller.poll_once()
    poller.start()
    poller.stop()


def test_stop_guard_turns_sigterm_into_a_flag() -> None:
    before = signal.getsignal(signal.SIGTERM)
    guard = StopGuard().install()
    try:
        assert not guard.wait_for_request(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        poll_until(guard.stop_requested.is_set, 10, "the SIGTERM flag")
        assert guard.stop_reason == "SIGTERM" and guard.stop_time is not None
        assert guard.wait_for_request(0.01)
    finally:
        guard.uninstall()
    assert signal.getsignal(signal.SIGTERM) is before


def test_save_requests_are_consumed_once() -> None:
    guard = StopGuard()
    guard.request_save("spot notice")
    assert guard.take_save_request() and not guard.take_save_request()
    assert not guard.stop_requested.is_set()


def test_trainer_saves_within_one_step_of_the_spot_notice(
    launch: Callable[..., Trainer], tmp_path: Path, imds: FakeIMDS
) -> None:
    ckpt = tmp_path / "ckpt"
    at = 3
    t = launch(
        single_cmd(
            ckpt,
            "--model.kind", "contrastive",
            "--max-steps", "100000",
            "--eval-every", "0",
            "--checkpoint.interval-steps", "0",  # no periodic saves: any save is the notice's
            "--preemption.spot-notice",
            "--preemption.spot-notice-endpoint", imds.url,
            "--preemption.spot-notice-interval-seconds", "0.1",
        ),
        "spot",
        {ENV_PAUSE_AT_STEP: str(at)},
    )  # fmt: skip
    t.wait_event("paused", 0, at)
    assert committed(ckpt) == []
    imds.notice = NOTICE
    t.wait_event("committed", 0, at, timeout=60)
    assert verify(ckpt / f"step-{at}", at) is None
    assert committed(ckpt) == [at]
    assert any(tok == imds.token for m, _, tok in imds.requests if m == "GET"), "IMDSv2 used"

    # Training goes on after the notice; the SIGTERM that follows stops it with a save.
    t.proc.send_signal(signal.SIGTERM)
    assert t.wait(60) == contract.EXIT_STOPPED, t.output()[-4000:]
    steps = [s for e, _, s in read_events(t.events) if e == "step"]
    assert committed(ckpt)[-1] == max(steps)
    assert "spot interruption notice" in t.output()
