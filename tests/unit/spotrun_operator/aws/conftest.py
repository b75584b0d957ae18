"""Fixtures for the AWS-facing code: moto's server on loopback, a hermetic AWS environment."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import botocore.retries.standard
import pytest
from aws_fixtures import aws_env, moto_server, moto_url, spot_history  # noqa: F401 (fixtures)


@pytest.fixture(autouse=True)
def hermetic_aws(request: pytest.FixtureRequest) -> None:
    """Every test here runs in the hermetic AWS environment (aws_fixtures.aws_env)."""
    request.getfixturevalue("aws_env")


@pytest.fixture
def backoffs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Attempt numbers botocore computed a retry delay for; the delay itself is zeroed
    (its jittered 0-1 s, 0-2 s, ... throttling backoff would only slow the suite)."""
    seen: list[int] = []

    def delay_amount(self: object, context: botocore.retries.standard.RetryContext) -> float:
        seen.append(context.attempt_number)
        return 0.0

    monkeypatch.setattr(botocore.retries.standard.ExponentialBackoff, "delay_amount", delay_amount)
    return seen


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A loopback port that is bound but not listening: connections are refused, and no
    other process can take the port while the test runs."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()
