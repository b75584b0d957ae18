"""What a new attempt spends before its first training step: the trainer's restart phases
(``spotrun_trainer.phases``), this code against an earlier version and a floor, in one run.

    python bench/restart_phases.py                   # 50M GPT-2, 1 and 2 ranks, 3 repeats
    python bench/restart_phases.py --params 10M --repeats 1 --nproc 2

One checkpoint is written first (``python -m spotrun_lm``, ``--nproc`` ranks). Each repeat
then resumes from a hard-linked copy of it, one step, with each peer in turn:

* ``new``: this tree's ``python -m spotrun_lm`` (the launcher, then torchrun): the time
  from the launch to rank 0's first step (its test-hook ``step`` event, polled every
  10 ms), and the phases of its ``spotrun: restart phases`` line;
* ``old``: the same resume with ``trainer/`` and ``api/`` of ``--base`` (a git ref;
  default ``main``), extracted with ``git archive``: the same launch-to-first-step time;
* ``floor``: ``torchrun`` of a script that only imports torch, joins the process group
  and ``torch.load``s the checkpoint's files: the launch to rank 0 holding the state.

The page cache is warm (the checkpoint was just written and each resume re-reads it): a
pod on a fresh node reads it cold, where verifying ahead saves more. The minimum of the
repeats is printed beside the median: on a shared machine it is the steadier figure.
Prints a table and writes bench/results/restart_phases.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from spotrun_trainer.phases import PHASES, parse_line
from spotrun_trainer.testhooks import ENV_EVENTS_FILE

REPO = Path(__file__).resolve().parents[1]
PEERS = ("new", "old", "floor")
DEADLINE = 600.0

FLOOR_SCRIPT = """
import os, sys, time
from pathlib import Path
import torch
import torch.distributed as dist
dist.init_process_group("gloo")
step_dir = Path(sys.argv[1])
rank = dist.get_rank()
torch.load(step_dir / "shared.pt", map_location="cpu", weights_only=True)
rank_file = step_dir / f"rank-{rank}.pt"
if rank_file.exists():
    torch.load(rank_file, map_location="cpu", weights_only=True)
dist.barrier()
if rank == 0:
    with open(os.environ["SPOTRUN_TEST_EVENTS_FILE"], "a") as f:
        f.write("loaded 0 0\\n")
dist.destroy_process_group()
"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--params", default="50M", help="model size (GPT-2, causal_lm)")
    p.add_argument("--nproc", default="1,2", help="rank counts to measure, comma-separated")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--base", default="main", help="git ref of the 'old' peer")
    p.add_argument("--out", default=str(REPO / "bench/results/restart_phases.json"))
    return p.parse_args()


def env_for(code: Path, events: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SPOTRUN_", "PET_", "TORCHELASTIC"))}  # fmt: skip
    env["PYTHONPATH"] = f"{code / 'api'}{os.pathsep}{code / 'trainer'}"
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", **{ENV_EVENTS_FILE: str(events)})  # fmt: skip
    return env


def lm_args(params: str, ckpt: Path, nproc: int, max_steps: int) -> list[str]:
    return [sys.executable, "-m", "spotrun_lm", "--model.params", params,
            "--model.vocab-size", "256", "--model.seq-len", "32", "--batch-size", "2",
            "--data.num-samples", "64", "--device", "cpu", "--threads", "1",
            "--checkpoint.dir", str(ckpt), "--checkpoint.interval-seconds", "0",
            "--checkpoint.interval-steps", "1000", "--report.metrics-port", "0",
            "--nproc-per-node", str(nproc), "--max-steps", str(max_steps)]  # fmt: skip


def timed(cmd: list[str], env: dict[str, str], events: Path, until: str, log: Path) -> float:
    """Seconds from the launch until ``until`` appears in the events file."""
    events.unlink(missing_ok=True)
    with open(log, "wb") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        seen = None
        while seen is None and time.monotonic() - t0 < DEADLINE:
            if events.exists() and until in events.read_text():
                seen = time.monotonic() - t0
            elif proc.poll() is not None:
                break
            else:
                time.sleep(0.01)
        rc = proc.wait(DEADLINE)
    if seen is None or rc != 0:
        raise RuntimeError(f"{cmd[:4]} exited {rc} before {until!r}:\n{log.read_text()[-3000:]}")
    return seen


def one(peer: str, code: dict[str, Path], folder: Path, pristine: Path, args: argparse.Namespace,
        nproc: int, step: int) -> dict[str, Any]:  # fmt: skip
    ckpt = folder / f"ckpt-{peer}"
    shutil.rmtree(ckpt, ignore_errors=True)
    subprocess.run(["cp", "-al", str(pristine), str(ckpt)], check=True)
    events, log = folder / f"{peer}.events", folder / f"{peer}.log"
    if peer == "floor":
        script = folder / "floor.py"
        script.write_text(FLOOR_SCRIPT)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", str(script), str(ckpt / f"step-{step}")]  # fmt: skip
        seconds = timed(cmd, env_for(code["new"], events), events, "loaded 0 0\n", log)
        return {"seconds": seconds}
    cmd = lm_args(args.params, ckpt, nproc, step + 1)
    launched = time.time()
    seconds = timed(cmd, env_for(code[peer], events), events, f"step 0 {step + 1}\n", log)
    out: dict[str, Any] = {"seconds": seconds}
    found = parse_line(log.read_text())
    if found is not None:
        out["phases"] = found.seconds
        out["phases_total"] = found.total
        out["t0_minus_launch"] = found.t0 - launched  # the line's t0 against our clock
        out["resumed_from"] = found.resumed_from
    return out


def prepare(args: argparse.Namespace, folder: Path) -> dict[str, Path]:
    """The code of each peer: this tree, and ``--base`` extracted."""
    old = folder / "old-code"
    old.mkdir()
    tar = subprocess.run(["git", "-C", str(REPO), "archive", args.base, "trainer", "api"],
                         check=True, capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(old)], input=tar, check=True)
    for tree in (old, REPO):  # bytecode up front: no peer pays for compiling it
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "trainer"),
                        str(tree / "api")], check=True)  # fmt: skip
    return {"new": REPO, "old": old}


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    secs = [r["seconds"] for r in runs]
    out: dict[str, Any] = {"median_seconds": statistics.median(secs), "min_seconds": min(secs),
                           "runs": runs}  # fmt: skip
    with_phases = [r["phases"] for r in runs if "phases" in r]
    if with_phases:
        out["median_phases"] = {n: statistics.median(p[n] for p in with_phases) for n in PHASES}
    return out


def bench_nproc(args: argparse.Namespace, code: dict[str, Path], folder: Path, nproc: int
                ) -> dict[str, Any]:  # fmt: skip
    pristine, step = folder / f"pristine-{nproc}", 2
    events = folder / "write.events"
    cmd = lm_args(args.params, pristine, nproc, step)
    timed(cmd, env_for(code["new"], events), events, f"step 0 {step}\n", folder / "write.log")
    size = sum(f.stat().st_size for f in (pristine / f"step-{step}").iterdir())
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in PEERS}
    for i in range(args.repeats):
        order = PEERS if i % 2 == 0 else tuple(reversed(PEERS))  # no peer always goes first
        for peer in order:
            runs[peer].append(one(peer, code, folder, pristine, args, nproc, step))
    result = {"checkpoint_bytes": size, **{p: summary(r) for p, r in runs.items()}}
    print_table(nproc, result)
    return result


def print_table(nproc: int, r: dict[str, Any]) -> None:
    print(f"\n{nproc} rank(s), checkpoint {r['checkpoint_bytes'] / 1e6:.0f} MB: "
          "launch -> first step (median, min)")  # fmt: skip
    for peer in PEERS:
        s = r[peer]
        print(f"  {peer:>5}: {s['median_seconds']:6.2f}s {s['min_seconds']:6.2f}s")
    phases = r["new"].get("median_phases")
    if phases:
        print("  new, median phases: " + " ".join(f"{n}={phases[n]:.2f}s" for n in PHASES))
    for stat in ("median", "min"):
        new, old = r["new"][f"{stat}_seconds"], r["old"][f"{stat}_seconds"]
        floor = r["floor"][f"{stat}_seconds"]
        print(
            f"  {stat}: new saves {old - new:.2f}s against old; {new - floor:.2f}s above the floor"
        )


def main() -> None:
    args = parse_args()
    folder = Path(tempfile.mkdtemp(prefix="spotrun-restart-"))
    try:
        code = prepare(args, folder)
        results = {str(n): bench_nproc(args, code, folder, int(n)) for n in args.nproc.split(",")}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report = {
        "command": " ".join(["bench/restart_phases.py", *sys.argv[1:]]),
        "base": args.base,
        "base_commit": subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", args.base], capture_output=True, text=True
        ).stdout.strip(),
        "params": args.params,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "page_cache": "warm",
        "nproc": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
