"""The real recovery bench's pure parts: the kubelet's pull durations, the master's log
marks, phases that add up to the whole, the summary's shape and the goodput model."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import real_recovery as rr
import real_recovery_goodput as g
import real_recovery_watch as w

from spotrun_dev.provisioner import CapacitySettings

T0 = dt.datetime(2026, 11, 26, 12, 0, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def line(seconds: float, text: str) -> str:
    return at(seconds).isoformat().replace("+00:00", "Z") + " " + text


@pytest.mark.parametrize(
    ("text", "seconds"), [("1m2.5s", 62.5), ("850ms", 0.85), ("3s", 3.0), ("1h0m1s", 3601.0)]
)
def test_go_durations(text: str, seconds: float) -> None:
    assert w.go_duration(text) == pytest.approx(seconds)


def test_a_pull_is_the_longest_pulled_event_and_a_present_image_is_none() -> None:
    msgs = [
        'Successfully pulled image "localhost/spotrun/trainer:dev" in 1m4.2s (1m4.2s including'
        " waiting). Image size: 6329100000 bytes.",
        'Successfully pulled image "localhost/spotrun/trainer:dev" in 850ms (850ms including',
        'Container image "localhost/spotrun/trainer:dev" already present on machine',
    ]
    assert w.pull_seconds(msgs) == pytest.approx(64.2)
    assert w.pull_seconds(msgs[2:]) == 0.0


def test_log_marks_take_the_first_resume_and_step_after_the_signal() -> None:
    lines = [
        line(-2, "INFO step 40: loss 2.1000, 8.0 samples/s, lr 1e-3"),
        line(-1, "INFO step 41: loss 2.0900, 8.0 samples/s, lr 1e-3"),
        "not a stamped line",
        line(20, "INFO resumed from /checkpoints/step-36 (step 36, written by 2 ranks) in 0.4s"),
        line(21, "INFO step 37: loss 2.2, 8.0 samples/s, lr 1e-3"),
        line(22, "INFO step 38: loss 2.2, 8.0 samples/s, lr 1e-3"),
    ]
    marks = w.log_marks(lines, T0)
    assert marks == w.LogMarks(at(20), 36, at(21), 41)
    assert w.log_marks(lines[:3], T0).loaded is None


def test_phases_are_clamped_and_add_up_to_signal_to_training() -> None:
    b = w.Boundaries(signal=T0, detect=at(5), bound=at(4), running=at(70), loaded=at(75),
                     trained=at(76), pull_s=50.0)  # fmt: skip
    p = b.phases()
    assert p == {"detect": 5.0, "capacity": 0.0, "pull": 50.0, "start": 15.0, "load": 5.0,
                 "first_step": 1.0}  # fmt: skip
    assert b.total() == 76.0
    assert w.Boundaries(signal=T0, detect=at(1)).phases() == {}
    # rebalance: the run trained on after the signal; the figure is its pause.
    b.paused = at(70)
    assert b.total() == 6.0


def test_a_rebalance_run_is_kept_only_under_the_same_lead(tmp_path: Path) -> None:
    settings = CapacitySettings(60.0, "preloaded")
    runs = [
        rr.Result("rebalance", v, 8.0, 0, {"detect": 70.0}, []) for v in ("spotrun", "kubeflow")
    ]
    out = tmp_path / "real_recovery.json"
    data = rr.write(runs, settings, out, 90.0)
    assert data["rebalance_lead_s"] == 90.0 and data["signals"]["rebalance"]["spotrun_s"] == 8.0
    assert len(rr.kept_runs(out, settings, set(), 90.0)) == 2
    assert (
        rr.kept_runs(out, settings, {("rebalance", "spotrun"), ("rebalance", "kubeflow")}, 60.0)
        == []
    )
    with pytest.raises(SystemExit, match="rebalance-lead"):
        rr.kept_runs(out, settings, set(), 60.0)


def test_the_summary_has_the_shape_the_issue_names() -> None:
    results = [
        rr.Result("nth", "spotrun", 10.0, 0, {"detect": 1.0}, []),
        rr.Result("nth", "spotrun", 14.0, 0, {"detect": 3.0}, []),
        rr.Result("nth", "kubeflow", 90.0, 2, {"detect": 2.0}, []),
        rr.Result("loss", "spotrun_spare", None, None, {}, ["not training again"]),
    ]
    data = rr.summary(results, CapacitySettings(60.0, "registry"))
    assert data["provisioning_delay_s"] == 60.0
    nth = data["signals"]["nth"]
    assert (nth["spotrun_s"], nth["kubeflow_s"], nth["lost_steps"]) == (12.0, 90.0, 0.0)
    assert nth["phases"]["detect"] == 2.0
    assert data["signals"]["loss"]["spotrun_spare_s"] is None


def test_goodput_falls_with_recovery_and_with_lost_work() -> None:
    mtbf = 4 * 3600 / 8
    fast, slow = g.goodput(10, False, 3.4, mtbf), g.goodput(300, False, 3.4, mtbf)
    assert 0 < slow < fast < 1
    assert g.goodput(10, True, 3.4, mtbf) < fast  # a loss also loses half an interval
    table = g.table({"signals": {"nth": {"spotrun_s": 10.0, "spotrun_spare_s": 10.0,
                                         "kubeflow_s": None}}}, stall=3.4)  # fmt: skip
    row = table["rates"]["1 per node per 4 h"]["nth"]
    assert row["kubeflow"] is None
    assert row["spotrun_spare"] == pytest.approx(row["spotrun"] * 8 / 9, abs=1e-4)


def test_grow_back_is_read_from_the_shrunk_and_the_grown_masters_logs() -> None:
    shrunk = [line(9, "step 40: loss 2.1"), line(80, "step 95: loss 1.9"),
              line(81, "saved checkpoint step 95")]  # fmt: skip
    grown = [line(84, "resumed from /ckpt/step-95 (step 95, world size 1)"),
             line(90, "step 96: loss 1.9")]  # fmt: skip
    assert w.last_step(shrunk) == (at(80), 95)
    assert w.grow_back(T0, shrunk, grown) == {"full_s": 90.0, "pause_s": 10.0,
                                               "lost_steps": 0.0}  # fmt: skip
    # Not yet trained (or the shrunk log never read): nothing to report.
    assert w.grow_back(T0, shrunk, grown[:1]) is None
    assert w.grow_back(T0, [], grown) is None
    # The grown gang resumed an older checkpoint: the steps after it are lost.
    older = [line(84, "resumed from /ckpt/step-90 (step 90)"), line(90, "step 91: loss 2")]
    assert (w.grow_back(T0, shrunk, older) or {}).get("lost_steps") == 5.0


def test_an_elastic_recovery_costs_its_pauses_and_a_gang_share_of_the_shrunk_time() -> None:
    row = {"spotrun_elastic_s": 10.0, "spotrun_elastic_grow_back": {"full_s": 90.0,
           "pause_s": 8.0, "lost_steps": 0.0}, "spotrun_s": 80.0}  # fmt: skip
    assert g.recovery(row, "spotrun_elastic") == pytest.approx(18.0 + 72.0 / 8)
    assert g.recovery(row, "spotrun") == 80.0
    # Never grown back within the bench: no figure rather than a flattering one.
    assert g.recovery({"spotrun_elastic_s": 10.0}, "spotrun_elastic") is None
    data = rr.summary([rr.Result("nth", "spotrun_elastic", 10.0, 0, {}, [], {}, {
        "full_s": 90.0, "pause_s": 8.0, "lost_steps": 0.0})],
        CapacitySettings(60.0, "preloaded"))  # fmt: skip
    assert data["signals"]["nth"]["spotrun_elastic_grow_back"]["pause_s"] == 8.0


def test_the_kubeflow_peer_is_spotruns_attempt_1_restarted_by_kubeflow_alone() -> None:
    import real_recovery_run as run

    from spotrun_dev import real_story

    body = real_story.trainer_run("r", "img:1", "ckpt", ("--max-steps=5",))
    account, job = run.kubeflow_objects(body)
    assert account["kind"] == "ServiceAccount" and "ownerReferences" not in account["metadata"]
    assert "ownerReferences" not in job["metadata"]
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert sorted(replicas) == ["Master", "Worker"]
    assert {r["restartPolicy"] for r in replicas.values()} == {"OnFailure"}
    assert job["spec"]["runPolicy"]["backoffLimit"] > 0
    pod = replicas["Master"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    (container,) = pod["containers"]
    assert container["image"] == "img:1" and "--max-steps=5" in container["command"]


def test_the_masters_own_restart_phases_after_the_signal() -> None:
    text = (
        "spotrun: restart phases start=0.100s imports=2.000s process_group=0.300s "
        "load=0.500s first_step=0.900s total=3.800s t0=1764158400.000 resumed_from=36 "
        "attempt=2"
    )
    lines = [line(-5, "INFO " + text.replace("attempt=2", "attempt=1")), line(30, "INFO " + text)]
    got = w.trainer_phases(lines, T0)
    assert got == {"start": 0.1, "imports": 2.0, "process_group": 0.3, "load": 0.5,
                   "first_step": 0.9}  # fmt: skip
    assert w.trainer_phases(lines[:1], T0) == {}


def test_merge_keeps_the_cases_not_run_again_and_refuses_other_settings(tmp_path: Path) -> None:
    settings = CapacitySettings(60.0, "registry")
    old = [rr.Result(sig, v, 100.0, 0, {"capacity": 60.0}, [])
           for sig in ("nth", "loss") for v in ("spotrun", "kubeflow")]  # fmt: skip
    out = tmp_path / "real_recovery.json"
    rr.write(old, settings, out, 120.0)
    kept = rr.kept_runs(out, settings, {("nth", "kubeflow")})
    assert sorted((r.signal, r.variant) for r in kept) == [
        ("loss", "kubeflow"), ("loss", "spotrun"), ("nth", "spotrun")]  # fmt: skip
    assert kept[0].phases == {"capacity": 60.0}
    with pytest.raises(SystemExit, match="other settings"):
        rr.kept_runs(out, CapacitySettings(90.0, "registry"), set())
