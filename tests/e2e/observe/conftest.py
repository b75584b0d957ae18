"""Fixtures of the install-and-observe tests.

The operator e2e fixtures (``crd``, ``checkpoint_pvc``, the ``Operator`` subprocess) come
from tests/e2e/conftest.py; the dashboard parsing from tests/e2e/chart/chartkit.py.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from observe_helpers import HELM, Helm

from spotrun_dev.cluster import LocalCluster


@pytest.fixture(scope="session")
def helm(cluster: LocalCluster) -> Helm:
    """The pinned helm (hack/build-binaries.sh builds it with the cluster's binaries)."""
    if not os.access(HELM, os.X_OK):
        pytest.fail(f"{HELM} is missing: run `bash hack/build-binaries.sh tools`", pytrace=False)
    return Helm(cluster.kubeconfig)


@pytest.fixture
def operator_log(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[Any]]:
    """Operators a test starts: stopped afterwards, their log shown when the test failed."""
    made: list[Any] = []
    yield made
    rep = getattr(request.node, "rep_call", None)
    for op in made:
        op.stop()
        if rep is not None and rep.failed:
            sys.stderr.write(f"\n--- operator log ({op.log_path}) ---\n{op.log()}\n")
