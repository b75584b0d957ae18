"""Import floors: the decision and observation modules are pure (no API client, no kopf,
no metrics library, no trainer), and spotrun_api depends on none of the operator."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE = ("spotrun_operator.reconcile", "spotrun_operator.observe", "spotrun_operator.finish")
FORBIDDEN = (
    "kopf",
    "kubernetes",
    "prometheus_client",
    "boto3",
    "torch",
    "spotrun_trainer",
    "spotrun_operator.kube",
    "spotrun_operator.runner",
)


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_load_no_io_library(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
