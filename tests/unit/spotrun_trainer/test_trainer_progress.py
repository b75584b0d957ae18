"""status.progress reporter (fake patch function, fake clock) and Prometheus metrics."""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from trainer_helpers import poll_until

from spotrun_api import contract
from spotrun_api.status import Progress
from spotrun_trainer.metrics import TrainerMetrics
from spotrun_trainer.progress import ProgressReporter, patch_body, reporter_from_env


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _reporter(calls: list[dict[str, Any]], clock: Clock, **kw: Any) -> ProgressReporter:
    return ProgressReporter(
        calls.append, min_interval=10.0, attempt=3, clock=clock, background=False, **kw
    )


def test_patch_body_is_a_merge_patch_of_status_progress() -> None:
    body = patch_body(Progress(step=5, samples_per_second=2.5, attempt=1))
    # restartPhases: null until this attempt has done its first step (a per-attempt field)
    progress = {"step": 5, "samplesPerSecond": 2.5, "attempt": 1, "restartPhases": None}
    assert body == {"status": {"progress": progress}}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the apiserver applies it to status."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def test_a_new_attempt_clears_the_previous_attempts_fields() -> None:
    previous = {
        "step": 500,
        "checkpointStep": 480,
        "checkpointTime": "2026-11-21T08:00:00Z",
        "checkpointPath": "/checkpoints/step-480",
        "samplesPerSecond": 812.5,
        "attempt": 1,
    }
    calls: list[dict[str, Any]] = []
    env = {contract.ENV_RUN: "r", contract.ENV_NAMESPACE: "ns", contract.ENV_ATTEMPT: "2"}
    r = reporter_from_env(env, 10.0, patch_factory=lambda name, ns: calls.append, background=False)
    assert r is not None
    # Resumed: the first report is the loaded checkpoint, before any throughput is measured.
    assert r.checkpoint(480, "2026-11-21T08:00:00Z", "/checkpoints/step-480")
    first = calls[0]["status"]["progress"]
    assert first["samplesPerSecond"] is None, "sent as null so the merge patch removes it"
    assert first["attempt"] == 2
    status = merge_patch({"progress": previous}, calls[0]["status"])
    fresh = {k: v for k, v in previous.items() if k != "samplesPerSecond"}
    assert status["progress"] == fresh | {"step": 480, "attempt": 2}  # resumed at 480
    # Steps without a measurement keep it null; the first measurement fills it in.
    r.min_interval = 0.0
    r.step(481)
    assert calls[-1]["status"]["progress"]["samplesPerSecond"] is None
    r.step(490, 99.0)
    status = merge_patch(status, calls[-1]["status"])
    assert status["progress"]["samplesPerSecond"] == 99.0 and status["progress"]["step"] == 490
    r.step(491)  # a later step without a new figure keeps this attempt's
    assert calls[-1]["status"]["progress"]["samplesPerSecond"] == 99.0


@pytest.mark.parametrize("raw", ["", "x", "0", "-1"])
def test_unknown_attempt_is_sent_as_null(raw: str) -> None:
    calls: list[dict[str, Any]] = []
    env = {contract.ENV_RUN: "r", contract.ENV_NAMESPACE: "ns", contract.ENV_ATTEMPT: raw}
    r = reporter_from_env(env, 10.0, patch_factory=lambda name, ns: calls.append, background=False)
    assert r is not None and r.step(1)
    assert calls[0]["status"]["progress"] == {
        "step": 1, "samplesPerSecond": None, "attempt": None, "restartPhases": None
    }  # fmt: skip


def test_steps_are_rate_limited() -> None:
    calls: list[dict[str, Any]] = []
    clock = Clock()
    r = _reporter(calls, clock)
    assert r.step(1, 100.0)  # the first report goes out at once
    clock.now += 3
    assert not r.step(2, 101.0)
    clock.now += 6.9
    assert not r.step(3)
    clock.now += 0.2  # 10.1 s after the first patch
    assert r.step(4)
    assert [c["status"]["progress"]["step"] for c in calls] == [1, 4]
    assert calls[-1]["status"]["progress"] == {
        "step": 4, "samplesPerSecond": 101.0, "attempt": 3, "restartPhases": None
    }  # fmt: skip


def test_checkpoint_patches_immediately_with_its_fields() -> None:
    calls: list[dict[str, Any]] = []
    clock = Clock()
    r = _reporter(calls, clock)
    r.step(10, 50.0)
    clock.now += 1
    assert r.checkpoint(10, "2026-11-21T08:00:00Z", "/checkpoints/step-10")
    assert calls[-1] == {
        "status": {
            "progress": {
                "step": 10,
                "checkpointStep": 10,
                "checkpointTime": "2026-11-21T08:00:00Z",
                "checkpointPath": "/checkpoints/step-10",
                "samplesPerSecond": 50.0,
                "attempt": 3,
                "restartPhases": None,
            }
        }
    }
    # The checkpoint patch restarts the interval.
    clock.now += 5
    assert not r.step(11)
    parsed = Progress.from_status(calls[-1]["status"]["progress"])
    assert parsed is not None and parsed.checkpoint_step == 10


def test_save_stall_rides_the_rate_limit_and_the_next_checkpoint_patch() -> None:
    calls: list[dict[str, Any]] = []
    clock = Clock()
    r = _reporter(calls, clock)
    r.step(10, 50.0)
    assert not r.save_stall(1.23456)  # held back by the rate limit, not lost
    assert r.checkpoint(10, "2026-11-21T08:00:00Z", "/checkpoints/step-10")
    sent = Progress.from_status(calls[-1]["status"]["progress"])
    assert sent is not None and sent.checkpoint_stall_seconds == 1.235
    clock.now += 11
    assert r.save_stall(-0.5)  # a clock oddity never reports a negative stall
    assert calls[-1]["status"]["progress"]["checkpointStallSeconds"] == 0.0


def test_close_flushes_what_the_rate_limit_held_back() -> None:
    calls: list[dict[str, Any]] = []
    clock = Clock()
    r = _reporter(calls, clock)
    r.step(1)
    r.step(2)
    r.close()
    assert [c["status"]["progress"]["step"] for c in calls] == [1, 2]


def test_patch_failures_are_logged_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    def failing(body: dict[str, Any]) -> None:
        raise RuntimeError("apiserver unreachable")

    r = ProgressReporter(failing, min_interval=0.0, background=False)
    assert r.step(1) and r.checkpoint(1, "t", "p")
    assert r.failures == 2 and r.sent == 0
    assert "apiserver unreachable" in caplog.text


def test_background_sender_delivers_newest_progress() -> None:
    calls: list[dict[str, Any]] = []
    r = ProgressReporter(calls.append, min_interval=0.0)
    try:
        r.step(7, 1.0)
        poll_until(lambda: any(c["status"]["progress"]["step"] == 7 for c in calls), 10, "patch")
    finally:
        r.close()


STATUS_PATH = "/apis/spotrun.dev/v1alpha1/namespaces/ns/trainingruns/r/status"
RUN_ENV = {contract.ENV_RUN: "r", contract.ENV_NAMESPACE: "ns", contract.ENV_ATTEMPT: "2"}


@dataclass
class FakeAPIServer:
    """Records PATCH requests; answers ``code`` with a JSON body."""

    url: str = ""
    code: int = 200
    patches: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)


@pytest.fixture
def apiserver() -> Iterator[FakeAPIServer]:
    state = FakeAPIServer()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return None

        def do_PATCH(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.patches.append((self.path, self.headers["Content-Type"], body))
            reply = json.dumps({"kind": "TrainingRun"} if state.code == 200 else {}).encode()
            self.send_response(state.code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

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


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Outside a pod: no in-cluster env, no KUBECONFIG, an empty HOME."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def write_kubeconfig(path: Path, server: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(  # JSON is YAML
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )


def progress_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "spotrun_trainer.progress" and r.levelno == logging.WARNING
    ]


@pytest.mark.parametrize("source", ["KUBECONFIG", "~/.kube/config"])
def test_progress_is_patched_with_a_kubeconfig_outside_a_pod(
    source: str,
    apiserver: FakeAPIServer,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if source == "KUBECONFIG":
        write_kubeconfig(tmp_path / "kubeconfig", apiserver.url)
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    else:
        write_kubeconfig(home / ".kube" / "config", apiserver.url)
    r = reporter_from_env(RUN_ENV, 0.0)  # the real kube_patch_fn, on the background sender
    assert r is not None, "a kubeconfig is enough to report progress"
    try:
        assert r.step(5, 12.5)
        poll_until(lambda: len(apiserver.patches) > 0, 10, "the status PATCH")
    finally:
        r.close()
    path, content_type, body = apiserver.patches[0]
    assert path == STATUS_PATH
    assert content_type == "application/merge-patch+json"
    progress = {"step": 5, "samplesPerSecond": 12.5, "attempt": 2, "restartPhases": None}
    assert body == {"status": {"progress": progress}}
    assert r.sent >= 1 and r.failures == 0


def test_reporter_is_off_without_any_config_with_one_warning(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert reporter_from_env({}, 10.0) is None
    assert reporter_from_env({contract.ENV_RUN: "r"}, 10.0) is None
    assert progress_warnings(caplog) == [], "not a run: nothing to report, nothing to say"
    missing = tmp_path / "missing-kubeconfig"
    monkeypatch.setenv("KUBECONFIG", str(missing))
    assert reporter_from_env(RUN_ENV, 10.0) is None  # logged and off, not a crash
    (warning,) = progress_warnings(caplog)
    assert warning.startswith("progress not reported to TrainingRun ns/r: no in-cluster config")
    assert f"KUBECONFIG={missing}" in warning
    monkeypatch.delenv("KUBECONFIG")
    caplog.clear()
    assert reporter_from_env(RUN_ENV, 10.0) is None
    (warning,) = progress_warnings(caplog)
    assert "~/.kube/config (KUBECONFIG unset)" in warning


def test_api_errors_are_logged_once_across_reports(
    apiserver: FakeAPIServer,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    apiserver.code = 403
    write_kubeconfig(tmp_path / "kubeconfig", apiserver.url)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    r = reporter_from_env(RUN_ENV, 0.0, background=False)
    assert r is not None
    for step in range(1, 6):
        assert r.step(step)  # never raises
    assert r.checkpoint(5, "2026-11-21T08:00:00Z", "/checkpoints/step-5")
    assert len(apiserver.patches) == 6 and r.failures == 6 and r.sent == 0
    (warning,) = progress_warnings(caplog)
    assert "patching status.progress failed" in warning and "403" in warning


def test_metrics_names_on_a_private_registry() -> None:
    registry = CollectorRegistry()
    m = TrainerMetrics(registry)
    m.step.set(42)
    m.loss.set(1.5)
    m.samples_per_second.set(12.0)
    m.observe_checkpoint(seconds=2.0, size=1234, timestamp=1_700_000_000.0)
    text = generate_latest(registry).decode()
    for line in (
        "spotrun_trainer_step 42.0",
        "spotrun_trainer_loss 1.5",
        "spotrun_trainer_samples_per_second 12.0",
        "spotrun_trainer_checkpoint_seconds_count 1.0",
        "spotrun_trainer_checkpoint_bytes 1234.0",
        "spotrun_trainer_last_checkpoint_timestamp_seconds 1.7e+09",
    ):
        assert line in text, line
    # A second instance on another registry must not clash (nothing global).
    TrainerMetrics(CollectorRegistry())


def test_metrics_are_served_over_http() -> None:
    m = TrainerMetrics(CollectorRegistry())
    port = m.serve(0, addr="127.0.0.1")
    try:
        m.step.set(3)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            assert "spotrun_trainer_step 3.0" in resp.read().decode()
    finally:
        m.close()
