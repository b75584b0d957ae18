"""pytest fixtures shared by every test of AWS-facing code (the operator's pricing and the
CLI's estimate): moto's server on loopback and a hermetic AWS environment. A conftest (or a
test module) imports the ones it uses."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aws_fakes import SpotHistory, serve_spot_history
from moto.server import ThreadedMotoServer


@pytest.fixture(scope="session")
def moto_server() -> Iterator[tuple[str, int]]:
    """moto's server in a thread on an ephemeral loopback port: (host, port)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield server.get_host_and_port()
    finally:
        server.stop()


@pytest.fixture
def moto_url(moto_server: tuple[str, int]) -> str:
    host, port = moto_server
    return f"http://{host}:{port}"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Fake static credentials, no region, no config files, no IMDS: nothing leaks in from
    the machine, and nothing can reach real AWS."""
    for name in (
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_EC2",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_MAX_ATTEMPTS",
        "AWS_RETRY_MODE",
        "AWS_SESSION_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # moto writes timestamps without a zone, which botocore reads as local time.
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def spot_history() -> Iterator[SpotHistory]:
    with serve_spot_history(SpotHistory()) as history:
        yield history
