"""A trainer start on a node without the image: pulled whole (``registry``) against pulled
lazily (``lazy``, stargz-snapshotter: hack/spotrun_dev/node_lazy.py), in one run.

    PYTHONPATH=api:operator:trainer:hack:cli:bench python bench/lazy_start.py --reps 2

Each repetition of each mode adds a fresh bare real node of that mode (bare_nodes.py),
runs one pod of the trainer image on it that imports what a start imports and takes one
training step of a small model, and removes the node. Figures, from
the pod's creation: the kubelet's pull (its ``Pulled`` event), the container's start
(``startedAt``), and the end of the step (the pod's own clock around imports and step, and
``finishedAt``). The registry's tag serves each mode's layers while it runs and the eager
ones afterwards. Prints a table and writes bench/results/lazy_start.json. Not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import real_recovery_watch as w
from kubernetes import client

from spotrun_dev import bare_nodes, cluster, example_images, images, realnodes
from spotrun_dev.waiting import wait_for

RESULTS = Path(__file__).resolve().parent / "results"
NAMESPACE = "bench-lazy-start"
MODES = ("registry", "lazy")
CODE = (
    "import time; t = time.monotonic()\n"
    "import torch, torch.distributed, transformers\n"
    "model = torch.nn.Linear(512, 512)\n"
    "model(torch.randn(64, 512)).sum().backward()\n"
    "print(f'imports+step {time.monotonic() - t:.2f}', flush=True)\n"
)


def one_start(core: client.CoreV1Api, mode: str) -> dict[str, float]:
    """One fresh node of ``mode``, one pod: its figures in seconds from the pod's creation."""
    with images.machine_lock():
        example_images.push_node_pulled(lazy=mode == "lazy")
    name = bare_nodes.add_bare_node(core, lazy=mode == "lazy")
    try:
        return _run_pod(core, name, realnodes.built_images()["trainer"].ref)
    finally:
        bare_nodes.remove_bare_node(core, name)


def _run_pod(core: client.CoreV1Api, node: str, image: str) -> dict[str, float]:
    container = {"name": "trainer", "image": image, "command": ["python", "-c", CODE]}
    spec = {"nodeName": node, "restartPolicy": "Never", "containers": [container],
            "tolerations": [{"operator": "Exists"}]}  # fmt: skip
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "start"}, "spec": spec}
    created = dt.datetime.now(dt.UTC)
    core.create_namespaced_pod(NAMESPACE, body)

    def ended() -> bool:
        phase = core.read_namespaced_pod("start", NAMESPACE).status.phase
        return phase in ("Succeeded", "Failed")

    try:
        wait_for("the trainer's start", ended, timeout=600)
        pod = core.read_namespaced_pod("start", NAMESPACE)
        logs = core.read_namespaced_pod_log("start", NAMESPACE)
        if pod.status.phase != "Succeeded":
            raise SystemExit(f"the start failed on {node}: {logs[-2000:]}")
        uid = pod.metadata.uid  # the namespace keeps the events of the starts before
        events = [e for e in core.list_namespaced_event(NAMESPACE).items
                  if e.involved_object.uid == uid]  # fmt: skip
        done = pod.status.container_statuses[0].state.terminated
        return {
            "pull": w.pull_seconds(e.message or "" for e in events),
            "started": (done.started_at - created).total_seconds(),
            "imports_step": float(logs.split("imports+step")[1].split()[0]),
            "finished": (done.finished_at - created).total_seconds(),
        }
    finally:
        core.delete_namespaced_pod("start", NAMESPACE, grace_period_seconds=0)
        wait_for("the pod gone", lambda: not _exists(core), timeout=120)


def _exists(core: client.CoreV1Api) -> bool:
    return any(p.metadata.name == "start" for p in core.list_namespaced_pod(NAMESPACE).items)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "lazy_start.json"))
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated: registry,lazy")
    args = p.parse_args()
    modes = args.modes.split(",")
    if unknown := set(modes) - set(MODES):
        p.error(f"--modes: unknown {sorted(unknown)} (known: {', '.join(MODES)})")
    local = cluster.ensure_cluster()
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    with local.api_client() as api:
        core = client.CoreV1Api(api)
        cluster.fresh_namespace(core, NAMESPACE)
        try:
            for rep in range(args.reps):
                for mode in modes:
                    runs[mode].append(one_start(core, mode))
                    print(f"[{rep + 1}/{args.reps}] {mode}: {runs[mode][-1]}", flush=True)
        finally:
            with images.machine_lock():
                example_images.push_node_pulled(lazy=False)
    out: dict[str, Any] = {"modes": {}, "machine": {"cpus": 2, "python": platform.python_version()}}
    print(f"{'mode':10} {'pull':>6} {'started':>8} {'imports+step':>13} {'finished':>9}  (median)")
    for mode, figures in runs.items():
        med = {k: round(statistics.median(f[k] for f in figures), 2) for k in figures[0]}
        out["modes"][mode] = {"median": med, "runs": figures}
        print(f"{mode:10} {med['pull']:6.1f} {med['started']:8.1f} {med['imports_step']:13.1f} "
              f"{med['finished']:9.1f}")  # fmt: skip
    out["time"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"bench took {time.monotonic() - started:.0f}s")
    raise SystemExit(code)
