"""The real-node bench's CPU account (real_recovery_cpu): /proc/stat and the nodes' cpuacct
cgroups read, sampled counters interpolated, and the window's seconds split by part."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import real_recovery_cpu as cpu

# /proc/stat's first line: user nice system idle iowait irq softirq steal guest guest_nice
STAT = "cpu  1000 20 300 9000 500 7 3 10 40 0\ncpu0 500 10 150 4500 250 3 1 5 20 0\n"


def test_busy_seconds_leave_out_idle_and_iowait_and_count_guest_once() -> None:
    assert cpu.machine_busy_seconds(STAT, hz=100) == pytest.approx(
        (1000 + 20 + 300 + 7 + 3 + 10) / 100
    )


def test_a_file_that_is_not_proc_stat_is_refused() -> None:
    with pytest.raises(ValueError, match="cpu line"):
        cpu.machine_busy_seconds("intr 1 2 3\n", hz=100)


def _group(root: Path, rel: str, ns: int) -> None:
    (root / rel).mkdir(parents=True, exist_ok=True)
    (root / rel / "cpuacct.usage").write_text(f"{ns}\n")


def test_cgroup_seconds_reads_each_nodes_two_trees_and_its_pods(tmp_path: Path) -> None:
    _group(tmp_path, "spotrun-spot-1", 5_000_000_000)
    _group(tmp_path, "spotrun-spot-1-system", 2_500_000_000)
    _group(tmp_path, "spotrun-spot-1/kubepods", 5_000_000_000)
    _group(tmp_path, "spotrun-spot-1/kubepods/besteffort/podaaa", 3_000_000_000)
    _group(tmp_path, "spotrun-spot-1/kubepods/podbbb", 1_000_000_000)
    _group(tmp_path, "spotrun-spot-1-system/podzzz", 1)  # not a pod: the system tree
    _group(tmp_path, "user.slice", 9_000_000_000)  # not a node
    (tmp_path / "spotrun-gone").mkdir()  # no usage file (removed while listed)
    assert cpu.cgroup_seconds(tmp_path) == {
        "spotrun-spot-1": 5.0,
        "spotrun-spot-1-system": 2.5,
        "podaaa": 3.0,
        "podbbb": 1.0,
    }


def S(at: float, **seconds: float) -> cpu.Sample:
    return cpu.Sample(at, seconds)


def test_series_interpolates_and_counts_a_new_cgroup_from_zero() -> None:
    s = cpu.Series([S(10, a=1.0), S(12, a=3.0, b=1.0), S(14, a=3.0, b=2.0)])
    assert s.at("a", 11) == pytest.approx(2.0)
    assert s.at("a", 9) == 1.0  # before the first sample: its value
    # b was made between 10 and 12: 0 at 10, so half of its first second by 11.
    assert s.at("b", 11) == pytest.approx(0.5)
    assert s.delta("b", 10, 14) == pytest.approx(2.0)
    assert s.at("missing", 12) == 0.0


def test_series_keeps_the_time_of_a_cgroup_that_went() -> None:
    s = cpu.Series([S(10, p=1.0), S(11, p=4.0), S(12)])
    assert s.delta("p", 10, 13) == pytest.approx(3.0)


def _at(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


def test_account_splits_the_window_by_part() -> None:
    before = S(
        100, machine=50.0,
        **{"spotrun-old": 10.0, "spotrun-old-system": 5.0, "spotrun-sys": 1.0,
           "spotrun-sys-system": 1.0, "spotrun-new": 0.0, "spotrun-new-system": 3.0},
    )  # fmt: skip
    after = S(
        110, machine=69.5, podR=6.0, podS=4.0, podP=1.0,
        **{"spotrun-old": 14.5, "spotrun-old-system": 6.0, "spotrun-sys": 1.5,
           "spotrun-sys-system": 1.5, "spotrun-new": 7.0, "spotrun-new-system": 8.0},
    )  # fmt: skip
    got = cpu.account([before, after], _at(100), _at(110), {"R": "new", "S": "old"},
                      old_nodes={"old", "gone"}, cpus=2)  # fmt: skip
    assert got == {
        "window_s": 10.0,
        "machine_busy_s": 19.5,
        "machine_busy_pct": 97.5,
        "replacement_rank_s": 6.0,
        "survivor_rank_s": 4.0,
        "replacement_system_s": 5.0,
        "replacement_other_s": 1.0,  # the new node's pods less its rank
        "survivor_system_s": 1.0,
        "other_nodes_s": 1.0,
        # The control plane and the rest: busy less every node's two trees.
        "rest_s": 19.5 - (7.0 + 5.0 + 4.5 + 1.0 + 0.5 + 0.5),
    }


def test_account_of_a_window_the_samples_do_not_cover_is_empty() -> None:
    samples = [S(100, machine=1.0), S(105, machine=2.0)]
    assert cpu.account(samples, _at(101), _at(106), {}, set(), cpus=2) == {}
    assert cpu.account([], _at(101), _at(102), {}, set(), cpus=2) == {}


def test_the_sampler_reads_the_machine_at_least_twice(tmp_path: Path) -> None:
    _group(tmp_path, "spotrun-n", 1_000_000_000)
    with cpu.Sampler(period=60, root=tmp_path) as sampler:
        pass
    assert len(sampler.samples) == 2  # one at the start, one at the stop
    assert all(s.seconds["spotrun-n"] == 1.0 and s.seconds["machine"] > 0
               for s in sampler.samples)  # fmt: skip
