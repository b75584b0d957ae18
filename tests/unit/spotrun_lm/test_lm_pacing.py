"""The built-in trainer's side of a paced checkpoint writer: its loop raises the hurry
before the save of a notice, a stop or the run's end, and the pace's default is the one
the docs state (the writer itself: tests/unit/spotrun_trainer/test_trainer_pacing.py)."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from spotrun_lm.config import ConfigError, load_config
from spotrun_lm.loop import TrainLoop
from spotrun_trainer.config import DEFAULT_WRITER_MB_PER_S
from spotrun_trainer.core import Boundary
from spotrun_trainer.pacing import Hurry
from spotrun_trainer.shard_writer import WriterOptions

DOCS = Path(__file__).resolve().parents[3] / "docs" / "trainer.md"


@pytest.mark.parametrize(
    "agreed", [{"notice": True}, {"stop": True}, {"finished": True}, {"due": True}]
)
def test_the_loop_hurries_before_the_save_of_a_notice_a_stop_or_the_end(
    agreed: dict[str, bool],
) -> None:
    """At a boundary where the ranks agreed on a notice (some other rank's guard saw it),
    a stop or the run's end, the hurry is raised before the save starts; an interval's
    save is paced."""
    hurry = Hurry()
    seen: list[bool] = []
    manager = SimpleNamespace(hurry=hurry)
    core = SimpleNamespace(last_saved=None, saved=lambda step: None)
    loop = cast(Any, TrainLoop.__new__(TrainLoop))
    loop.cfg = SimpleNamespace(checkpoint=SimpleNamespace(interval_steps=0, keep_best=False))
    loop.io = SimpleNamespace(manager=manager, core=core)
    loop.start_step, loop.stall_pending = 0, False
    loop.save = lambda step, metric, blocking: seen.append(hurry.is_set())
    flags = {"stop": False, "notice": False, "due": False, "finished": False, **agreed}
    TrainLoop.maybe_save(loop, Boundary(step=5, **flags), None, False)
    assert seen == [not agreed.get("due", False)]
    hurry.close()


def test_the_pace_is_on_by_default_as_the_docs_say() -> None:
    cfg = load_config([], env={})
    assert cfg.checkpoint.writer_max_mb_per_s == DEFAULT_WRITER_MB_PER_S > 0
    assert WriterOptions().max_write_mb_per_s == DEFAULT_WRITER_MB_PER_S
    row = re.search(r"^\| `--checkpoint\.writer-max-mb-per-s` \| `([^`]*)` \|", DOCS.read_text(),
                    re.MULTILINE)  # fmt: skip
    assert row is not None and float(row.group(1)) == DEFAULT_WRITER_MB_PER_S


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_bad_pace_names_the_field(value: str) -> None:
    with pytest.raises(ConfigError, match=r"checkpoint\.writer_max_mb_per_s"):
        load_config(["--checkpoint.writer-max-mb-per-s", value], env={})
