"""bench/operator_recovery.py's summary (pure): the JSON it writes keeps the shape of the
committed results, and its figures are the percentiles of what the watches saw."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections import Counter
from types import ModuleType

from spotrun_dev import paths

BENCH = paths.REPO_ROOT / "bench" / "operator_recovery.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("operator_recovery", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _shape(value: object) -> object:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items() if k != "api_writes_during_storm"}
    return None


def test_the_summary_keeps_the_committed_json_shape_and_figures() -> None:
    bench = _bench()
    args = argparse.Namespace(runs=3, nodes=10)
    times = {
        f"run-{i}": bench.RunTimes(
            signal=sig, t_signal=100.0, t_created=100.0 + i + 1, t_running=100.0 + 2 * (i + 1)
        )
        for i, sig in enumerate(("nth", "nth", "loss"))
    }
    times["run-9"] = bench.RunTimes(signal="asg", t_signal=100.0)  # never recovered
    writes = Counter({"create pytorchjobs": 3, "patch trainingruns/status": 9})
    result = bench.summarize(args, times, 4, writes, 3 * 2**20, 1.5)
    committed = json.loads((BENCH.parent / "results" / "operator_recovery.json").read_text())
    assert _shape(result) == _shape(committed)
    assert result["recoveries_observed"] == 3 and result["interruptions"] == 4
    assert result["signal_to_next_attempt_created_s"] == {"p50": 2.0, "p99": 3.0, "mean": 2.0}
    assert result["signal_to_next_attempt_running_s"]["p50"] == 4.0
    assert result["by_signal"]["nth"] == {"n": 2, "p50_running_s": 2.0}  # 2 s and 4 s
    assert result["by_signal"]["asg"] == {"n": 0, "p50_running_s": None}
    assert result["api_writes_per_recovery"] == 4.0
    assert (result["operator_peak_rss_mib"], result["operator_cpu_seconds"]) == (3.0, 1.5)
