"""The built-in trainer builds its model with the collector off and loads its checkpoint
and trains with it on (spotrun_trainer/startup_gc.py); every way out of main turns it on."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import pytest
from trainer_helpers import trainer_env

from spotrun_api import contract
from spotrun_lm import parts, train
from spotrun_lm.__main__ import main
from spotrun_trainer import launcher, startup_gc

TINY = ["--batch-size=2", "--model.n-layer=1", "--model.n-embd=16", "--model.seq-len=8",
        "--data.num-samples=32", "--device=cpu", "--report.metrics-port=0",
        "--checkpoint.interval-steps=1", "--checkpoint.interval-seconds=0"]  # fmt: skip


@pytest.fixture(autouse=True)
def _alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """No operator or torchrun variable of the caller's: one rank, outside a cluster."""
    for name in set(os.environ) - set(trainer_env()):
        monkeypatch.delenv(name)
    gc.enable()


def test_the_model_is_built_with_the_collector_off_and_loaded_with_it_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, list[bool]] = {"build": [], "load": []}
    build, resume = parts.build_parts, train._resume

    def watched_build(*args: Any, **kwargs: Any) -> Any:
        seen["build"].append(gc.isenabled())
        return build(*args, **kwargs)

    def watched_resume(*args: Any, **kwargs: Any) -> int:
        seen["load"].append(gc.isenabled())
        return resume(*args, **kwargs)

    monkeypatch.setattr(train, "build_parts", watched_build)
    monkeypatch.setattr(train, "_resume", watched_resume)
    ckpt = ["--checkpoint.dir", str(tmp_path / "ckpt")]
    assert main([*TINY, *ckpt, "--max-steps", "2"]) == contract.EXIT_DONE
    assert main([*TINY, *ckpt, "--max-steps", "3"]) == contract.EXIT_DONE  # a resume
    assert seen == {"build": [False, False], "load": [True, True]}
    assert gc.isenabled() and not startup_gc.paused()
    assert gc.get_freeze_count() > 0  # start-up's objects, out of the collections' way


def test_a_config_error_leaves_the_collector_on(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--batch-size", "many"]) == 2
    assert "batch_size" in capsys.readouterr().err
    assert gc.isenabled()


def test_the_launcher_supervises_with_the_collector_on(monkeypatch: pytest.MonkeyPatch) -> None:
    on_at_launch: list[bool] = []

    def fake_launch(argv: list[str], nproc: int, grace: float, *, module: str) -> int:
        on_at_launch.append(gc.isenabled())
        return contract.EXIT_DONE

    monkeypatch.setattr(launcher, "launch", fake_launch)
    monkeypatch.setenv(contract.ENV_PROCS_PER_NODE, "2")
    assert main(["--max-steps", "3"]) == contract.EXIT_DONE
    assert on_at_launch == [True]
