"""``make demo``: a real training run surviving spot interruptions on the local cluster.

The chart installs the operator as a pod on a real node; a 2-node TrainingRun of the real
trainer image (DDP over gloo between two pods) trains and checkpoints onto a shared volume,
and lives through an NTH spot interruption, a network partition whose cut-off rank tries
to commit after the next attempt fenced the folder, an application crash and
a graceful node shutdown, each done for real on real nodes. ``kubectl get tr -w`` prints
every change; at the end a table per interruption (signal, steps lost, the checkpoint the
next attempt resumed from, time until it trained again), the loss curve continuing across
attempts, and a bitwise comparison of the final weights with an uninterrupted reference run
of the same image and world size.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from typing import Any

import yaml
from kubernetes import client

from spotrun_dev import (
    chart_install,
    cluster,
    cluster_apply,
    images,
    paths,
    real_story,
    realnodes,
    storage,
)

NAMESPACE = "spotrun-demo"
CRD = paths.REPO_ROOT / "crds" / "trainingruns.spotrun.dev.yaml"


# What spotrun does with each way a rebalance recommendation reaches a node (the e2e
# tests named in docs/signals.md prove each line).
REBALANCE_RULES = """\
  NTH IMDS mode:    taint + cordon, no drain -> no restart; a Warning event, and the next
                    attempt avoids the node (--restart-on-rebalance restarts at once;
                    --replace-on-rebalance asks for a replacement and moves once it is warm)
  NTH queue mode:   taint + cordon + drain   -> rebalance-recommendation: the whole gang is
                    stopped gracefully at once (preemption budget), next attempt elsewhere
  EKS managed group: cordon + drain, no taint -> mng-rebalance, the same as a queue-mode drain"""


def say(msg: str) -> None:
    print(f"\n\033[1m==> {msg}\033[0m", flush=True)


class WatchTable:
    """``kubectl get tr -w``, printing a row only when a run's NAME, PHASE, ATTEMPT,
    PREEMPTIONS or FAILURES changed (the trainer updates STEP twice a second)."""

    def __init__(self, namespace: str = NAMESPACE) -> None:
        kubectl = [str(paths.binary("kubectl")), "--kubeconfig", str(paths.KUBECONFIG)]
        self.proc = subprocess.Popen(
            [*kubectl, "get", "tr", "-n", namespace, "-w"], stdout=subprocess.PIPE, text=True
        )
        self.thread = threading.Thread(target=self._print, daemon=True)
        self.thread.start()

    def _print(self) -> None:
        assert self.proc.stdout is not None
        seen: set[tuple[str, ...]] = set()
        for line in self.proc.stdout:
            key = tuple(line.split()[:5])
            if key not in seen:
                seen.add(key)
                print(line, end="", flush=True)

    def stop(self) -> None:
        self.proc.terminate()


def interruption_table(story: real_story.Story) -> str:
    rows = [("attempt", "signal", "operator saw", "last step", "resumed from", "steps lost",
             "to training again")]  # fmt: skip
    for i in story.interruptions:
        resumed, to_training = f"step-{i.resumed_from}", f"{i.seconds_to_training:.0f}s"
        rows.append((str(i.attempt), i.signal, i.recorded_signal, str(i.last_step),
                     resumed, str(i.lost_steps), to_training))  # fmt: skip
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)


def loss_curve(story: real_story.Story, width: int = 40) -> str:
    """The training loss the trainer logged, one line per logged step, by attempt."""
    points = sorted({(step, attempt, loss) for attempt, step, loss in story.losses})
    if not points:
        return "(no loss lines logged)"
    top = max(p[2] for p in points)
    lines = []
    for step, attempt, loss in points:
        bar = "#" * max(1, int(width * loss / top))
        lines.append(f"step {step:4d}  attempt {attempt}  loss {loss:.4f}  {bar}")
    return "\n".join(lines)


def weights_verdict(got: dict[str, Any], want: dict[str, Any]) -> tuple[bool, str]:
    """(equal, the line to print) for the run's final weights against the reference's.
    No tensors on either side fails: two empty sets are trivially equal and prove nothing."""
    if not got or not want:
        return False, (
            f"no weights compared: {len(got)} tensors in the run, {len(want)} in the reference"
        )
    differing = real_story.differing_weights(got, want)
    if differing:
        return False, f"{len(want)} tensors: DIFFERENT in {differing}"
    return True, f"{len(want)} tensors: bitwise EQUAL"


def _setup(
    api: client.ApiClient, core: client.CoreV1Api, built: dict[str, images.ImageArchive]
) -> chart_install.Release:
    cluster.fresh_namespace(core, NAMESPACE)
    for claim in ("ckpt", "ckpt-ref"):
        storage.ensure_checkpoint_claim(core, NAMESPACE, claim)
    cluster_apply.apply_manifests(api, [yaml.safe_load(CRD.read_text())])
    return chart_install.install_operator(core, NAMESPACE, built["operator"].ref)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--example", help="run examples/<name> instead (make demo EXAMPLE=<name>)")
    example = parser.parse_args().example
    if example:
        from spotrun_dev import demo_example

        return demo_example.run(example)
    started = time.monotonic()
    local = cluster.ensure_cluster()
    with local.api_client() as api:
        core = client.CoreV1Api(api)
        say("images and real nodes (built once, cached machine-wide)")
        built = images.ensure_images()
        nodes = realnodes.ensure_real_nodes(core)
        print("\n".join(f"  {n.name}  {n.ip}  {n.zone}" for n in nodes))
        say("helm install charts/spotrun: the operator runs as a pod on a real node")
        _setup(api, core, built)
        story = real_story.Story(api, NAMESPACE, len(nodes))
        watcher = WatchTable()
        try:
            say(f"reference run: {real_story.MAX_STEPS} steps, 2 nodes, nothing interrupts it")
            ref = story.reference(built["trainer"].ref)
            say("the run: the same image, config and world size, through four interruptions")
            story.start(built["trainer"].ref)
            for attempt, signal, steps in real_story.PLAN[:2]:
                say(f"attempt {attempt}: {signal} on one of its nodes (for real)")
                story.interrupt(attempt, signal, steps)
            say(f"attempt {real_story.CRASH_ATTEMPT}: the trainer crashes at step "
                f"{real_story.CRASH_AT} (exit 1)")  # fmt: skip
            story.crash()
            attempt, signal, steps = real_story.PLAN[2]
            say(f"attempt {attempt}: {signal} (the kubelet's graceful node shutdown)")
            story.interrupt(attempt, signal, steps)
            run = story.finish()
        finally:
            watcher.stop()
    say("what happened, from the trainer's own progress and logs")
    print(interruption_table(story))
    print(f"\nphase {run.get('phase')}: {run.get('preemptions')} preemptions, "
          f"{run.get('failures')} failure (the crash); reference {ref.get('phase')}")  # fmt: skip
    say("the loss curve continues across attempts")
    print(loss_curve(story))
    got = real_story.final_weights(storage.host_path(NAMESPACE, "ckpt"), real_story.MAX_STEPS)
    want = real_story.final_weights(storage.host_path(NAMESPACE, "ckpt-ref"), real_story.MAX_STEPS)
    same, verdict = weights_verdict(got, want)
    say("final weights vs the uninterrupted reference")
    print(verdict)
    say("and a rebalance recommendation (docs/signals.md)")
    print(REBALANCE_RULES)
    print(f"\ndemo took {time.monotonic() - started:.0f}s")
    return 0 if same and run.get("phase") == "Succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
