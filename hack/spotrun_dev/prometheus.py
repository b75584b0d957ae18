"""A throwaway real Prometheus on loopback, for tests.

Starts Debian's ``/usr/bin/prometheus`` (hack/install-prometheus.sh installs it) on a free
127.0.0.1 port with a generated config: the given scrape targets at a 1 s interval, TSDB in
a temporary directory, optional rule files. A job's targets are "host:port" strings, or
static target groups ``{"targets": [...], "labels": {...}}`` (labels as a PodMonitor's
relabelling would set them). ``query`` runs an instant query through the HTTP API,
``query_range`` a range query (what a Grafana panel runs); ``wait_for`` polls a query until
a predicate holds; ``rules``/``alerts`` show the rule engine's state. Use it as a context
manager::

    with Prometheus.start({"spotrun-operator": ["127.0.0.1:8000"]}) as prom:
        prom.wait_for('up{job="spotrun-operator"}', lambda s: any(x.value == 1 for x in s))
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

PROMETHEUS_BIN = Path("/usr/bin/prometheus")
INSTALL_HINT = "install it with hack/install-prometheus.sh (Debian's prometheus package)"


class PrometheusError(RuntimeError):
    """Prometheus did not start, died, or answered a query with an error."""


@dataclass(frozen=True)
class Sample:
    """One element of an instant vector."""

    labels: dict[str, str]
    value: float
    timestamp: float


@dataclass(frozen=True)
class Series:
    """One element of a range query's matrix: (timestamp, value) pairs."""

    labels: dict[str, str]
    values: list[tuple[float, float]]


# A job's targets: "host:port" strings, or static groups {"targets": [...], "labels": {...}}.
Targets = Sequence[str] | Sequence[Mapping[str, Any]]


def _static_configs(targets: Targets) -> list[dict[str, Any]]:
    plain = [t for t in targets if isinstance(t, str)]
    groups: list[dict[str, Any]] = [{"targets": plain}] if plain else []
    for t in targets:
        if not isinstance(t, str):
            group: dict[str, Any] = {"targets": list(t["targets"])}
            if t.get("labels"):
                group["labels"] = dict(t["labels"])
            groups.append(group)
    return groups or [{"targets": []}]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (it may be taken again before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def render_config(
    jobs: Mapping[str, Targets],
    *,
    scrape_interval: str = "1s",
    metrics_path: str = "/metrics",
    rule_files: Sequence[Path] = (),
) -> str:
    """prometheus.yml scraping ``jobs`` (job name → targets)."""
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": scrape_interval,
        },
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": metrics_path,
                "static_configs": _static_configs(targets),
            }
            for job, targets in jobs.items()
        ],
    }
    if rule_files:
        config["rule_files"] = [str(p) for p in rule_files]
    return yaml.safe_dump(config, sort_keys=False)


class Prometheus:
    """A running Prometheus process; stop it with ``stop()`` or by leaving the ``with``."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        port: int,
        workdir: Path,
        scrape_interval: str = "1s",
        rule_files: Sequence[Path] = (),
    ) -> None:
        self.process = process
        self.port = port
        self.workdir = workdir
        self.url = f"http://127.0.0.1:{port}"
        self.scrape_interval = scrape_interval
        self.rule_files = tuple(rule_files)

    @classmethod
    def start(
        cls,
        jobs: Mapping[str, Targets],
        *,
        binary: Path = PROMETHEUS_BIN,
        scrape_interval: str = "1s",
        rule_files: Sequence[Path] = (),
        ready_timeout: float = 60.0,
        attempts: int = 3,
    ) -> Prometheus:
        """Start Prometheus scraping ``jobs`` and wait until /-/ready answers 200."""
        if not binary.exists():
            raise PrometheusError(f"{binary} not found: {INSTALL_HINT}")
        last: PrometheusError | None = None
        # A free port can be taken between our probe and Prometheus's bind: retry.
        for _ in range(attempts):
            workdir = Path(tempfile.mkdtemp(prefix="spotrun-prometheus-"))
            config = workdir / "prometheus.yml"
            config.write_text(
                render_config(jobs, scrape_interval=scrape_interval, rule_files=rule_files)
            )
            port = free_port()
            log = (workdir / "prometheus.log").open("wb")
            try:
                process = subprocess.Popen(
                    [
                        str(binary),
                        f"--config.file={config}",
                        f"--storage.tsdb.path={workdir / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--storage.tsdb.retention.time=1h",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            finally:
                log.close()
            prom = cls(process, port, workdir, scrape_interval, rule_files)
            try:
                prom._wait_ready(ready_timeout)
                return prom
            except PrometheusError as err:
                prom.stop()
                last = err
                if "address already in use" not in str(err):
                    break
        assert last is not None
        raise last

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp,
            ):
                if resp.status == 200:
                    return
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"prometheus not ready after {timeout:.0f}s:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def retarget(self, jobs: Mapping[str, Targets], timeout: float = 15.0) -> None:
        """Scrape ``jobs`` from now on, as service discovery would (pods come and go): the
        configuration is rewritten and reloaded (SIGHUP). Returns once Prometheus's active
        targets are exactly those addresses."""
        config = render_config(
            jobs, scrape_interval=self.scrape_interval, rule_files=self.rule_files
        )
        (self.workdir / "prometheus.yml").write_text(config)
        self.process.send_signal(signal.SIGHUP)
        want = {
            (job, addr)
            for job, targets in jobs.items()
            for group in _static_configs(targets)
            for addr in group["targets"]
        }
        deadline = time.monotonic() + timeout
        while True:
            active = {
                (t["labels"].get("job"), t["discoveredLabels"].get("__address__"))
                for t in self.targets()
            }
            if active == want:
                return
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"targets {sorted(active)} after the reload, not {sorted(want)}:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.2)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines Prometheus logged."""
        path = self.workdir / "prometheus.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET /api/v1/<path>; returns ``data`` of a successful answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as err:
            body = json.load(err)
        if body.get("status") != "success":
            raise PrometheusError(f"{path}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[Sample]:
        """Instant query; a scalar answer comes back as one sample without labels."""
        data = self.api("query", {"query": expr})
        kind = data["resultType"]
        if kind == "vector":
            return [
                Sample(dict(r["metric"]), float(r["value"][1]), float(r["value"][0]))
                for r in data["result"]
            ]
        if kind == "scalar":
            ts, value = data["result"]
            return [Sample({}, float(value), float(ts))]
        raise PrometheusError(f"query {expr!r} returned a {kind}, not an instant vector")

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        """Range query from ``start`` to ``end`` (Unix seconds) every ``step`` seconds."""
        data = self.api(
            "query_range",
            {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"},
        )
        if data["resultType"] != "matrix":
            raise PrometheusError(f"query_range {expr!r} returned a {data['resultType']}")
        return [
            Series(dict(r["metric"]), [(float(t), float(v)) for t, v in r["values"]])
            for r in data["result"]
        ]

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule (``groups[].rules[]``) with its health and last error."""
        groups: list[dict[str, Any]] = self.api("rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def alerts(self) -> list[dict[str, Any]]:
        """Active (pending or firing) alerts."""
        active: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return active

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets with their health and last error."""
        active: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return active

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[list[Sample]], bool] = bool,
        *,
        timeout: float = 30.0,
        interval: float = 0.25,
    ) -> list[Sample]:
        """Poll ``query(expr)`` until ``predicate`` holds; returns the samples that passed."""
        deadline = time.monotonic() + timeout
        samples: list[Sample] = []
        while True:
            samples = self.query(expr)
            if predicate(samples):
                return samples
            if self.process.poll() is not None:
                raise PrometheusError(f"prometheus died:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"{expr!r} did not satisfy the predicate within {timeout:.0f}s; last "
                    f"answer {samples}; targets {self.targets()}"
                )
            time.sleep(interval)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop Prometheus (SIGTERM, then SIGKILL) and delete its data."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
