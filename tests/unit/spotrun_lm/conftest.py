"""The built-in trainer's main freezes start-up's objects (spotrun_trainer/startup_gc.py):
in this shared test process they go back to the collector after each test, so the
interpreter's exit still frees them."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _unfreeze_after_main() -> Iterator[None]:
    yield
    gc.unfreeze()
    gc.enable()
