"""The operator e2e fixtures of tests/e2e/controller/conftest.py (``crd``,
``checkpoint_pvc``, the ``Operator`` subprocess), loaded once under a name of their own so
that these tests share them instead of keeping copies (a conftest cannot be imported by
name: every directory has one)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

_NAME = "spotrun_e2e_controller_conftest"
_PATH = Path(__file__).resolve().parents[1] / "controller" / "conftest.py"


def _load() -> Any:
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    spec = importlib.util.spec_from_file_location(_NAME, _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module
    spec.loader.exec_module(module)
    return module


_controller = _load()
crd = _controller.crd
checkpoint_pvc = _controller.checkpoint_pvc
pytest_runtest_makereport = _controller.pytest_runtest_makereport
Operator: Any = _controller.Operator
FAST_FLAGS: tuple[str, ...] = _controller.FAST_FLAGS
