"""Fixtures of the cost and budget e2e tests (the operator fixtures are tests/e2e's): moto's EC2
server on loopback seeded with spot price history (aws_fakes.py, in tests/unit/spotrun_operator/aws
on pytest's pythonpath), and an operator started with an environment of its own (AWS endpoint,
fake credentials)."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aws_fakes import SpotHistory, serve_spot_history
from cost_helpers import StartOperator
from moto.server import ThreadedMotoServer

from controller_process import Operator
from spotrun_dev.cluster import LocalCluster

# What boto3 may read from the machine; the operator under test gets none of it.
_AWS_LEAKS = (
    "AWS_REGION",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_EC2",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_SESSION_TOKEN",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
)


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's EC2 server in a thread of the test process, on an ephemeral loopback port."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def spot_history() -> Iterator[SpotHistory]:
    """The spot price history moto serves while the test runs (empty until seeded)."""
    with serve_spot_history(SpotHistory()) as history:
        yield history


@pytest.fixture
def aws_env(tmp_path: Path) -> dict[str, str]:
    """A hermetic AWS environment: fake static credentials, us-east-1, no config files, no
    instance metadata; nothing can reach real AWS."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        # moto writes timestamps without a zone, which botocore reads as local time.
        "TZ": "UTC",
    }


@pytest.fixture
def start_operator(
    cluster: LocalCluster,
    crd: dict[str, Any],
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[StartOperator]:
    """``start_operator(*flags, env={...})``: ``spotrun-operator`` scoped to the test's
    namespace with the e2e fast flags, then ``flags`` (later flags win), in the test's
    environment plus ``env`` minus what boto3 could pick up from the machine. Stopped at
    the end; its log is shown when the test failed."""
    made: list[Any] = []

    def start(*flags: str, env: Mapping[str, str] | None = None) -> Any:
        op = Operator(cluster.kubeconfig, namespace, tmp_path / f"operator-{len(made)}.log", flags)
        made.append(op)
        with monkeypatch.context() as m:  # Operator.start passes os.environ on
            for name in _AWS_LEAKS:
                m.delenv(name, raising=False)
            for name, value in (env or {}).items():
                m.setenv(name, value)
            op.start()
        return op

    yield start
    rep = getattr(request.node, "rep_call", None)
    for op in made:
        op.stop()
        if rep is not None and rep.failed:
            sys.stderr.write(f"\n--- operator log ({op.log_path}) ---\n{op.log(120)}\n")
