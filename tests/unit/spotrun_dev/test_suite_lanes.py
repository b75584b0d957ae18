"""``make test``'s lanes (spotrun_dev.suite) run every test file exactly once, every lane
runs whatever another did, and the exit status is the first failing lane's."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from spotrun_dev import paths, suite

TESTS = paths.REPO_ROOT / "tests"
LANES = {"kwok": suite.KWOK_LANE, "processes": suite.PROCESS_LANE, "real": suite.REAL_LANE}


def lane_files(lane: Sequence[str]) -> set[Path]:
    roots = [paths.REPO_ROOT / a for a in lane if not a.startswith("-")]
    ignored = [paths.REPO_ROOT / a.split("=", 1)[1] for a in lane if a.startswith("--ignore=")]
    return {
        f
        for root in roots
        for f in root.rglob("test_*.py")
        if not any(f.is_relative_to(i) for i in ignored)
    }


def test_every_test_file_is_in_exactly_one_lane() -> None:
    found = {name: lane_files(lane) for name, lane in LANES.items()}
    assert all(found.values()), found.keys()
    everything = set(TESTS.rglob("test_*.py"))
    union = set().union(*found.values())
    assert union == everything, sorted(str(f) for f in everything - union)
    assert sum(len(f) for f in found.values()) == len(everything), "a file in two lanes"


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ({"kwok": 0, "processes": 0, "real": 0}, 0),
        ({"kwok": 0, "processes": 1, "real": 0}, 1),
        ({"kwok": 2, "processes": 0, "real": 1}, 2),
        ({"kwok": 0, "processes": 0, "real": 5}, 5),
    ],
)
def test_the_first_failing_lane_decides_and_every_lane_runs(
    codes: dict[str, int],
    expected: int,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Each lane is a real process that prints its name and the caller's arguments."""

    def command(lane: Sequence[str], extra: Sequence[str]) -> list[str]:
        (name,) = [n for n, lane_args in LANES.items() if tuple(lane) == lane_args]
        code = f"print('lane {name}', {list(extra)!r}); raise SystemExit({codes[name]})"
        return [sys.executable, "-c", code]

    monkeypatch.setattr(suite, "pytest_command", command)
    assert suite.run_lanes(["-x"]) == expected
    out = capfd.readouterr().out
    for name in LANES:
        assert f"lane {name} ['-x'" in out, out
    # The background lane's output is printed in one piece, after its header.
    assert out.index("(ran beside") < out.index("lane processes") < out.index("(alone)"), out
    assert out.index("(alone)") < out.index("lane real"), out
