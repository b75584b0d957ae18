"""Tests that run the real trainer as processes (under torchrun, killed with SIGTERM and
SIGKILL, resumed bitwise): they need only the venv but take minutes, so they live apart
from ``tests/unit`` (seconds) and carry the ``integration`` marker."""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)
