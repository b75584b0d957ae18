"""The installed ``torchx.schedulers`` entry points add ``spotrun`` without taking over
TorchX's default scheduler (a plain ``torchx run`` must not submit to a cluster)."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import metadata

import pytest
from torchx import plugins, schedulers


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """TorchX's plugin registry as a fresh process sees it: every discovery channel on."""
    monkeypatch.delenv("TORCHX_PLUGINS_SOURCE", raising=False)
    plugins.registry().clear()
    yield
    plugins.registry().clear()


def test_spotrun_is_registered_as_installed() -> None:
    eps = metadata.entry_points().select(group="torchx.schedulers")
    assert eps["spotrun"].value == "spotrun_cli.torchx_scheduler:create_scheduler"


@pytest.mark.usefixtures("fresh_registry")
def test_torchx_keeps_its_own_default_scheduler() -> None:
    # TorchX's own default: the first of its built-ins when no plugin is installed.
    torchx_default = next(iter(schedulers.DEFAULT_SCHEDULER_MODULES))
    assert schedulers.get_default_scheduler_name() == torchx_default
    names = list(schedulers.get_scheduler_factories())
    assert "spotrun" in names
    assert set(schedulers.DEFAULT_SCHEDULER_MODULES) <= set(names)


@pytest.mark.usefixtures("fresh_registry")
def test_builtins_still_come_from_torchx() -> None:
    """Re-registered built-ins load TorchX's own factories, not a copy of ours."""
    eps = metadata.entry_points().select(group="torchx.schedulers")
    for name, module in schedulers.DEFAULT_SCHEDULER_MODULES.items():
        if name in eps.names:
            assert eps[name].value == f"{module}:create_scheduler"
