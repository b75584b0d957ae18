"""FSDP2 runs with DCP checkpoints: stop or kill at a random step and resume bitwise equal
at the same world size; resume on another world size (4 -> 2, 2 -> 4) with the global
batch and data position continuing exactly. Real processes (torchrun, gloo), real signals.

Few and small on purpose: every 4-process run shares two CPU cores with everything else.
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from test_trainer_resume import STOP_DEADLINE, _assert_resumed_at, _interrupt
from trainer_helpers import (
    COMMON_ARGS,
    EVERY,
    MAX_STEPS,
    PYTHON,
    START_DEADLINE,
    Trainer,
    assert_bitwise_equal,
    interruption_seed,
    trainer_env,
)

from spotrun_api import contract
from spotrun_trainer.checkpoint import verify
from spotrun_trainer.sharded import read_full
from spotrun_trainer.testhooks import ENV_PAUSE_AT_STEP, ENV_SAMPLES_FILE

GLOBAL_BATCH = 8
FSDP_ARGS = [
    "--parallel", "fsdp",
    "--global-batch-size", str(GLOBAL_BATCH),
    "--data.val-fraction", "0.2",  # enough validation rows for a batch on each of 4 ranks
    "--checkpoint.async-save",
]  # fmt: skip
LM_ARGS = ["--model.dropout", "0"]  # no RNG in the step: other world sizes compare too

RunFn = Callable[..., Trainer]


def fsdp_cmd(
    ckpt: Path, nproc: int, *extra: str, kind: str = "contrastive", launcher: bool = False
) -> list[str]:
    """torchrun, or (``launcher``) spotrun's launcher, which turns SIGTERM into exit 143
    as PID 1 of a pod does."""
    start = (
        [PYTHON, "-m", "spotrun_lm", "--nproc-per-node", str(nproc)]
        if launcher
        else [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
              str(nproc), "-m", "spotrun_lm"]
    )  # fmt: skip
    return [*start, *COMMON_ARGS, *FSDP_ARGS, "--model.kind", kind,
            "--checkpoint.dir", str(ckpt), *extra]  # fmt: skip


def _pick_step(label: str) -> int:
    step = random.Random(f"{interruption_seed()}-{label}").randint(1, MAX_STEPS - 1)
    print(f"{label}: interrupting after step {step}")
    return step


def load_fsdp_checkpoint(ckpt: Path, step: int) -> dict[str, Any]:
    """Every file's state: shared, per rank, and the DCP shards assembled whole."""
    folder = ckpt / f"step-{step}"
    state = {"shared": torch.load(folder / "shared.pt", weights_only=True)}
    for f in sorted(folder.glob("rank-*.pt")):
        state[f.stem] = torch.load(f, weights_only=True)
    state["dcp"] = read_full(folder / "dcp")
    return state


def read_samples(path: Path) -> dict[int, dict[int, tuple[float, list[int]]]]:
    """``{step: {rank: (loss, sample ids)}}`` from a samples file."""
    out: dict[int, dict[int, tuple[float, list[int]]]] = {}
    for line in path.read_text().splitlines():
        step, rank, loss, ids = line.split()
        out.setdefault(int(step), {})[int(rank)] = (float(loss), [int(i) for i in ids.split(",")])
    return out


def global_view(samples: dict[int, dict[int, tuple[float, list[int]]]], steps: range) -> list[Any]:
    """Per step: the global batch's ids (sorted) and the mean loss over ranks."""
    out = []
    for s in steps:
        ranks = samples[s]
        ids = sorted(i for _, rank_ids in ranks.values() for i in rank_ids)
        out.append((s, ids, sum(loss for loss, _ in ranks.values()) / len(ranks)))
    return out


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, int], Path]:
    """Uninterrupted FSDP runs, made on first use: (kind, nproc) -> their folder."""
    made: dict[tuple[str, int], Path] = {}

    def get(kind: str, nproc: int) -> Path:
        if (kind, nproc) not in made:
            folder = tmp_path_factory.mktemp(f"reference-fsdp-{kind}-{nproc}")
            extra = LM_ARGS if kind == "causal_lm" else []
            t = _spawn(fsdp_cmd(folder / "ckpt", nproc, *extra, kind=kind), folder, "reference",
                       {ENV_SAMPLES_FILE: str(folder / "samples")})  # fmt: skip
            try:
                rc = t.wait(START_DEADLINE)
            finally:
                t.kill_tree()
                t.proc.wait()
            assert rc == 0, t.output()[-4000:]
            assert verify(folder / "ckpt" / f"step-{MAX_STEPS}", MAX_STEPS) is None
            made[(kind, nproc)] = folder
        return made[(kind, nproc)]

    return get


def _spawn(cmd: Sequence[str], folder: Path, name: str, env_extra: dict[str, str]) -> Trainer:
    log, events = folder / f"{name}.log", folder / f"{name}.events"
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


# Each signal, world size and writer once: a graceful stop of 2 ranks writing from a
# process, a kill of 4 writing from threads (the other pairs added 100 s and no path;
# SIGTERM at 2 -> 4 ranks and SIGKILL at 4 -> 2 are test_fsdp_resumes_on_another_world_size).
@pytest.mark.parametrize(
    ("sig", "nproc", "mode"),
    [("SIGTERM", 2, "process"), ("SIGKILL", 4, "thread")],
)
def test_fsdp_resume_is_bitwise_equal(
    sig: str, nproc: int, mode: str, launch: RunFn, tmp_path: Path, references: Any
) -> None:
    reference = references("contrastive", nproc) / "ckpt"
    ckpt = tmp_path / "ckpt"
    step = _pick_step(f"fsdp{nproc}-{sig}")
    cmd = fsdp_cmd(ckpt, nproc, "--checkpoint.async-mode", mode, launcher=sig == "SIGTERM")
    t = launch(cmd, "interrupted", {ENV_PAUSE_AT_STEP: str(step)})
    resume_at = _interrupt(t, sig, nproc, step, ckpt, to_group=True)
    if sig == "SIGTERM":
        files = {p.name for p in (ckpt / f"step-{step}" / "dcp").iterdir()}
        assert {".metadata", *(f"__{r}_0.distcp" for r in range(nproc))} <= files
        # Hashed by the writer as it wrote (no read-back), and what verify() checked.
        assert {f"__{r}_0.distcp.sha256" for r in range(nproc)} <= files

    r = launch(fsdp_cmd(ckpt, nproc, "--checkpoint.async-mode", mode), "resumed")
    assert r.wait() == contract.EXIT_DONE, r.output()[-4000:]
    _assert_resumed_at(r, resume_at)
    assert_bitwise_equal(load_fsdp_checkpoint(reference, MAX_STEPS),
                         load_fsdp_checkpoint(ckpt, MAX_STEPS))  # fmt: skip


@pytest.mark.parametrize(("before", "after", "sig"), [(4, 2, "SIGKILL"), (2, 4, "SIGTERM")])
def test_fsdp_resumes_on_another_world_size(
    before: int, after: int, sig: str, launch: RunFn, tmp_path: Path, references: Any
) -> None:
    reference = references("causal_lm", 2)
    ckpt = tmp_path / "ckpt"
    # After the first checkpoint, so the resumed run has a checkpoint of `before` ranks.
    step = random.Random(f"{interruption_seed()}-reshard").randint(EVERY + 1, MAX_STEPS - 1)
    print(f"reshard {before} -> {after}: interrupting after step {step}")
    samples = {ENV_SAMPLES_FILE: str(tmp_path / "samples-before")}
    cmd = fsdp_cmd(ckpt, before, *LM_ARGS, kind="causal_lm", launcher=sig == "SIGTERM")
    t = launch(cmd, "before",
               {ENV_PAUSE_AT_STEP: str(step), **samples})  # fmt: skip
    t.wait_event("committed", 0, EVERY)
    resume_at = _interrupt(t, sig, before, step, ckpt, to_group=True)
    assert resume_at >= EVERY

    r = launch(fsdp_cmd(ckpt, after, *LM_ARGS, kind="causal_lm"), "after",
               {ENV_SAMPLES_FILE: str(tmp_path / "samples-after")})  # fmt: skip
    assert r.wait(STOP_DEADLINE + START_DEADLINE) == contract.EXIT_DONE, r.output()[-4000:]
    _assert_resumed_at(r, resume_at)
    assert f"written by {before} ranks" in r.output()

    # The global batch of every step, across both runs, is the reference's: no sample
    # repeated or skipped, whatever the world size.
    ref = global_view(read_samples(reference / "samples"), range(1, MAX_STEPS + 1))
    got = global_view(read_samples(tmp_path / "samples-before"), range(1, resume_at + 1))
    after_samples = read_samples(tmp_path / "samples-after")
    assert min(after_samples) == resume_at + 1
    assert all(len(after_samples[s]) == after for s in after_samples)
    got += global_view(after_samples, range(resume_at + 1, MAX_STEPS + 1))
    assert [(s, ids) for s, ids, _ in got] == [(s, ids) for s, ids, _ in ref]
    for (s, _, loss), (_, _, ref_loss) in zip(got, ref, strict=True):
        assert loss == pytest.approx(ref_loss, rel=1e-4), f"loss at step {s}"

    final = read_full(ckpt / f"step-{MAX_STEPS}" / "dcp")["train"]["model"]
    ref_final = read_full(reference / "ckpt" / f"step-{MAX_STEPS}" / "dcp")["train"]["model"]
    assert set(final) == set(ref_final)
    for k in final:
        torch.testing.assert_close(final[k], ref_final[k], rtol=1e-3, atol=1e-4, msg=k)
