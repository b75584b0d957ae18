"""The restart-phase line (written on rank 0, read back by benches and tests), the process
clock behind it, its place in status.progress, and the checkpoint check made ahead of the
load."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

import spotrun_trainer
from spotrun_api import contract
from spotrun_trainer import checkpoint_verify, phases
from spotrun_trainer.phases import PHASES, PhaseClock, RestartPhases, format_line, parse_line
from spotrun_trainer.progress import ProgressReporter

SECONDS = {"start": 0.41, "imports": 2.1, "process_group": 0.3, "load": 0.52, "first_step": 0.2}


def test_the_line_reads_back_as_written() -> None:
    p = RestartPhases(1790000000.125, dict(SECONDS), resumed_from=120, attempt=3)
    line = format_line(p)
    assert line == (
        "spotrun: restart phases start=0.410s imports=2.100s process_group=0.300s "
        "load=0.520s first_step=0.200s total=3.530s t0=1790000000.125 resumed_from=120 "
        "attempt=3"
    )
    logged = f"2026-11-26 10:00:00,000 rank0 INFO spotrun_trainer: {line}\nnext line\n"
    assert parse_line(logged) == p


def test_a_fresh_start_outside_a_run_says_none() -> None:
    p = RestartPhases(12.5, dict(SECONDS))
    line = format_line(p)
    assert line.endswith("resumed_from=none attempt=none")
    back = parse_line(line)
    assert back is not None and back.resumed_from is None and back.attempt is None


def test_every_line_is_found_and_other_text_is_not_a_line() -> None:
    a = format_line(RestartPhases(1.0, dict(SECONDS), 4, 1))
    b = format_line(RestartPhases(2.0, dict(SECONDS), 8, 2))
    assert [p.attempt for p in phases.parse_lines(f"x {a}\ny\nz {b}\n")] == [1, 2]
    assert parse_line("spotrun: restart phases start=1s") is None
    assert parse_line(a.replace("load=", "loaded=")) is None


def test_phase_ends_are_t0_plus_the_running_sum() -> None:
    p = RestartPhases(100.0, dict(SECONDS))
    ends = p.ends()
    assert list(ends) == list(PHASES)
    assert ends["start"] == pytest.approx(100.41)
    assert ends["first_step"] == pytest.approx(100.0 + p.total)


def test_marks_count_once_and_never_go_backwards() -> None:
    clock = PhaseClock(t0=100.0)
    clock.mark("start", 100.5)
    clock.mark("imports", 102.0)
    clock.mark("imports", 150.0)  # a second library start-up in the process: ignored
    clock.mark("process_group", 101.0)  # earlier than the mark before it: 0 s
    clock.loaded(7)
    clock.loaded(9)  # a second load (another manager): neither its step nor its time
    found = clock.take(attempt=2)
    assert found is not None and found.resumed_from == 7 and found.attempt == 2
    assert found.seconds["start"] == pytest.approx(0.5)
    assert found.seconds["imports"] == pytest.approx(1.5)
    assert found.seconds["process_group"] == 0.0
    assert all(v >= 0 for v in found.seconds.values())
    assert clock.take(attempt=2) is None, "once per process"
    with pytest.raises(ValueError, match="unknown restart phase"):
        clock.mark("warmup")


def test_a_missing_mark_is_a_phase_of_zero_seconds() -> None:
    clock = PhaseClock(t0=time.time() - 1.0)
    found = clock.take(attempt=None)  # only first_step is marked, by take itself
    assert found is not None
    assert [found.seconds[n] for n in PHASES[:-1]] == [0.0] * 4
    assert found.seconds["first_step"] >= 1.0


def test_the_process_start_precedes_the_import_of_the_library() -> None:
    started = phases.process_start_time()
    assert started is not None, "no /proc/self/stat (the project runs on Linux)"
    assert time.time() - 24 * 3600 < started <= spotrun_trainer.IMPORTED_AT + 0.02
    assert phases.CLOCK.t0 <= spotrun_trainer.IMPORTED_AT


@pytest.mark.parametrize(("raw", "value"), [("12.5", 12.5), ("", None), ("x", None), ("0", None)])
def test_the_launchers_start_is_read_from_the_env(raw: str, value: float | None) -> None:
    assert phases.launch_t0({phases.ENV_LAUNCH_T0: raw}) == value


def test_the_phases_go_with_the_first_steps_report() -> None:
    # The core records them just before the first step's report (TrainerCore.report_step):
    # no patch of their own, so every report still says a step of its own.
    calls: list[dict[str, Any]] = []
    r = ProgressReporter(calls.append, min_interval=60.0, background=False)
    p = RestartPhases(1790000000.0, dict(SECONDS), 4, 2)
    r.restart_phases(p.to_progress())
    assert calls == []
    assert r.step(5)
    assert calls[-1]["status"]["progress"]["step"] == 5
    sent = calls[-1]["status"]["progress"]["restartPhases"]
    assert sent == {"start": 0.41, "imports": 2.1, "processGroup": 0.3, "load": 0.52,
                    "firstStep": 0.2, "t0": 1790000000.0}  # fmt: skip
    # Per attempt: the first patch of the next attempt's reporter clears it.
    fresh = ProgressReporter(calls.append, background=False)
    fresh.step(6)
    assert calls[-1]["status"]["progress"]["restartPhases"] is None


# --- the check ahead of the load --------------------------------------------------------


def _checkpoint(directory: Path, step: int, files: dict[str, bytes]) -> Path:
    folder = directory / contract.step_dir_name(step)
    folder.mkdir(parents=True)
    entries = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        entries[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    marker = {"step": step, "files": entries}
    (folder / contract.COMMIT_MARKER).write_text(json.dumps(marker))
    return folder


def test_files_are_checked_in_parallel_and_the_first_failure_in_name_order_is_told(
    tmp_path: Path,
) -> None:
    files = {"shared.pt": b"s" * 100, "rank-0.pt": b"a" * 50, "rank-1.pt": b"b" * 50}
    folder = _checkpoint(tmp_path, 3, files)
    assert checkpoint_verify.verify(folder, 3) is None
    (folder / "shared.pt").write_bytes(b"x" * 100)
    (folder / "rank-1.pt").write_bytes(b"y" * 50)
    assert checkpoint_verify.verify(folder, 3) == "rank-1.pt fails its sha256 checksum"
    (folder / "rank-0.pt").unlink()
    assert checkpoint_verify.verify(folder, 3) == "rank-0.pt missing"


def test_a_verdict_reached_ahead_is_taken_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = _checkpoint(tmp_path, 4, {"shared.pt": b"g" * 64})
    bad = _checkpoint(tmp_path, 8, {"shared.pt": b"b" * 64})
    (bad / "shared.pt").write_bytes(b"c" * 64)
    checkpoint_verify.verify_ahead(tmp_path).join(10)
    calls: list[Path] = []
    real = checkpoint_verify.verify

    def counted(step_dir: Path, step: int | None = None) -> str | None:
        calls.append(step_dir)
        return real(step_dir, step)

    monkeypatch.setattr(checkpoint_verify, "verify", counted)
    assert checkpoint_verify.verdict(bad, 8) == "shared.pt fails its sha256 checksum"
    assert checkpoint_verify.verdict(good, 4) is None
    assert calls == [], "both verdicts came from the check ahead"
    assert checkpoint_verify.verdict(good, 4) is None and calls == [good], "used once"


def test_a_file_changed_after_the_check_ahead_is_checked_again(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path, 5, {"shared.pt": b"g" * 64})
    checkpoint_verify.verify_ahead(tmp_path).join(10)
    (folder / "shared.pt").write_bytes(b"h" * 64)  # same size, new bytes (and mtime)
    stat = (folder / "shared.pt").stat()
    os.utime(folder / "shared.pt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert checkpoint_verify.verdict(folder, 5) == "shared.pt fails its sha256 checksum"
