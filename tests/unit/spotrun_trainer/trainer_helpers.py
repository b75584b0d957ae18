"""Helpers for trainer tests: real trainer subprocesses, event polling, state comparison."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[3]
TRAINER_SRC = REPO / "trainer"
PYTHON = sys.executable
START_DEADLINE = 240.0  # a cold start imports torch (+ transformers) on a busy 2-core box

# One small config shared by the uninterrupted reference runs and the interrupted ones.
MAX_STEPS = 12
EVERY = 4
COMMON_ARGS = [
    "--max-steps", str(MAX_STEPS),
    "--batch-size", "4",
    "--threads", "1",
    "--seed", "7",
    "--eval-every", "6",
    "--eval-batches", "2",
    "--data.num-samples", "96",
    "--model.vocab-size", "64",
    "--model.seq-len", "16",
    "--model.n-embd", "32",
    "--model.n-layer", "2",
    "--model.n-head", "2",
    "--model.proj-dim", "16",
    "--optim.warmup-steps", "3",
    "--checkpoint.interval-seconds", "0",
    "--checkpoint.interval-steps", str(EVERY),
    "--checkpoint.keep", "2",
    "--report.metrics-port", "0",
    "--report.log-every", "1",
]  # fmt: skip


def interruption_seed() -> int:
    """Seed of the random interruption steps; SPOTRUN_TEST_SEED replays a failure."""
    seed = int(os.environ.get("SPOTRUN_TEST_SEED", random.SystemRandom().randrange(10**6)))
    print(f"interruption seed {seed} (replay with SPOTRUN_TEST_SEED={seed})")
    return seed


def trainer_env(events: Path | None = None, **extra: str) -> dict[str, str]:
    """A clean environment: none of the caller's SPOTRUN_*/torchrun variables leak in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SPOTRUN_", "PET_", "TORCHELASTIC"))
        and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env["PYTHONPATH"] = os.pathsep.join(
        [str(TRAINER_SRC), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    if events is not None:
        env["SPOTRUN_TEST_EVENTS_FILE"] = str(events)
    env.update(extra)
    return env


@dataclass
class Trainer:
    """A trainer process tree (own session, so the whole tree can be signalled)."""

    proc: subprocess.Popen[bytes]
    log: Path
    events: Path
    started: float = field(default_factory=time.monotonic)
    # What a worker's command line holds: how kill_tree tells this run's torchrun workers
    # (each in a session of its own) from other processes.
    marker: bytes = b"spotrun_lm"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal_group(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def kill_tree(self) -> None:
        """SIGKILL the launcher's group and every worker (torchrun gives each its own session)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            self.signal_group(signal.SIGKILL)
        for event, _, pid in read_events(self.events):
            if event == "pid" and _runs(pid, self.marker):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)

    def wait(self, timeout: float = START_DEADLINE) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_tree()
            self.proc.wait()
            raise AssertionError(
                f"trainer still running after {timeout}s\n{self.output()[-4000:]}"
            ) from None

    def wait_event(self, event: str, rank: int, step: int, timeout: float = START_DEADLINE) -> None:
        wait_for_events(self, [(event, rank, step)], timeout)


def _runs(pid: int, marker: bytes) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def start_process(
    folder: Path,
    cmd: Sequence[str],
    name: str,
    env_extra: Mapping[str, str] | None = None,
    marker: bytes = b"spotrun_lm",
) -> Trainer:
    """``cmd`` in its own session in ``folder``, its output in ``<name>.log`` and its test
    hooks' events in ``<name>.events``, with a clean environment plus ``env_extra``."""
    log, events = folder / f"{name}.log", folder / f"{name}.events"
    env = trainer_env(events, **(env_extra or {}))
    with open(log, "wb") as out:
        proc = subprocess.Popen(list(cmd), cwd=folder, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    return Trainer(proc, log, events, marker=marker)


def reap(runs: Iterable[Trainer]) -> None:
    """SIGKILL every tree still alive (torchrun's workers included) and wait for it."""
    for t in runs:
        t.kill_tree()
        t.proc.wait()


def read_events(path: Path) -> list[tuple[str, int, int]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def poll_until(
    check: Callable[[], bool], timeout: float, what: str, alive: Trainer | None = None
) -> None:
    """Poll ``check`` with a deadline; fail early when ``alive`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while not check():
        if alive is not None and alive.proc.poll() is not None and not check():
            raise AssertionError(
                f"trainer exited {alive.proc.returncode} before {what}\n{alive.output()[-4000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)  # polling interval, not a wait for an outcome
        delay = min(delay * 1.5, 0.25)


def wait_for_events(
    trainer: Trainer, wanted: Sequence[tuple[str, int, int]], timeout: float = START_DEADLINE
) -> None:
    poll_until(
        lambda: set(wanted) <= set(read_events(trainer.events)),
        timeout,
        f"events {list(wanted)}",
        alive=trainer,
    )


def single_cmd(ckpt: Path, *extra: str, kind: str = "causal_lm") -> list[str]:
    return [PYTHON, "-m", "spotrun_lm", *COMMON_ARGS, "--model.kind", kind,
            "--checkpoint.dir", str(ckpt), *extra]  # fmt: skip


def torchrun_cmd(ckpt: Path, *extra: str, kind: str = "contrastive") -> list[str]:
    return [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "spotrun_lm", *COMMON_ARGS, "--model.kind", kind,
            "--checkpoint.dir", str(ckpt), *extra]  # fmt: skip


def launcher_cmd(ckpt: Path, *extra: str, kind: str = "contrastive") -> list[str]:
    return single_cmd(ckpt, "--nproc-per-node", "2", *extra, kind=kind)


def load_checkpoint(ckpt: Path, step: int) -> dict[str, Any]:
    folder = ckpt / f"step-{step}"
    state = {"shared": torch.load(folder / "shared.pt", weights_only=True)}
    for f in sorted(folder.glob("rank-*.pt")):
        state[f.stem] = torch.load(f, weights_only=True)
    return state


def assert_bitwise_equal(a: Any, b: Any, path: str = "") -> None:
    """Recursive equality; tensors compared bit for bit (dtype, shape and every value)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(
            a.view(torch.uint8) if a.dtype.is_floating_point and a.dim() else a,
            b.view(torch.uint8) if b.dtype.is_floating_point and b.dim() else b,
        ), f"tensor differs at {path}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"keys differ at {path}"
        for k in a:
            assert_bitwise_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), f"length differs at {path}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_bitwise_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def committed(ckpt: Path) -> list[int]:
    """Steps of the committed ``step-N`` folders, oldest first."""
    steps = []
    for p in ckpt.glob("step-*"):
        if (p / "COMMITTED").is_file():
            steps.append(int(p.name.split("-", 1)[1]))
    return sorted(steps)


def folder_digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def tiny_hf_trainer(
    folder: Path, max_steps: int, callbacks: list[Any], seed: int = 1
) -> tuple[Any, Any]:
    """A 1-layer GPT-2 and a Hugging Face Trainer over random tokens (CPU, no hub)."""
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=8, n_embd=16, n_layer=1,
                                       n_head=2))  # fmt: skip
    tokens = torch.randint(0, 32, (32, 8), generator=torch.Generator().manual_seed(seed))
    data = [{"input_ids": t, "labels": t} for t in tokens]
    args = TrainingArguments(output_dir=str(folder / "out"), max_steps=max_steps,
                             per_device_train_batch_size=4, save_strategy="no", seed=seed,
                             use_cpu=True, report_to="none", disable_tqdm=True)  # fmt: skip
    return Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks), model
