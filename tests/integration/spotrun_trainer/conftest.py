"""Fixtures of the trainer tests (helpers live in trainer_helpers.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from trainer_helpers import (
    MAX_STEPS,
    START_DEADLINE,
    Trainer,
    single_cmd,
    torchrun_cmd,
    trainer_env,
)


def _start(cmd: Sequence[str], folder: Path, name: str, env_extra: dict[str, str]) -> Trainer:
    log = folder / f"{name}.log"
    events = folder / f"{name}.events"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(cmd),
            cwd=folder,
            env=trainer_env(events, **env_extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Trainer(proc, log, events)


def _reap(t: Trainer) -> None:
    # The whole tree: workers of a SIGKILLed launcher may outlive it.
    t.kill_tree()
    t.proc.wait()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Trainer]]:
    """Start trainer processes; every tree still alive at teardown is SIGKILLed."""
    started: list[Trainer] = []

    def _launch(
        cmd: Sequence[str], name: str = "run", env_extra: dict[str, str] | None = None
    ) -> Trainer:
        t = _start(cmd, tmp_path, name, env_extra or {})
        started.append(t)
        return t

    yield _launch
    for t in started:
        _reap(t)


def _reference(folder: Path, cmd: Sequence[str]) -> Path:
    t = _start(cmd, folder, "reference", {})
    try:
        rc = t.wait(START_DEADLINE)
    finally:
        _reap(t)
    assert rc == 0, t.output()[-4000:]
    assert (folder / "ckpt" / f"step-{MAX_STEPS}" / "COMMITTED").is_file()
    return folder / "ckpt"


@pytest.fixture(scope="session")
def reference_single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Checkpoints of an uninterrupted single-process run (GPT-2 causal LM)."""
    folder = tmp_path_factory.mktemp("reference-single")
    return _reference(folder, single_cmd(folder / "ckpt"))


@pytest.fixture(scope="session")
def reference_ddp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Checkpoints of an uninterrupted 2-process DDP run (contrastive encoder, gloo)."""
    folder = tmp_path_factory.mktemp("reference-ddp")
    return _reference(folder, torchrun_cmd(folder / "ckpt"))
