"""A network partition of a real node: its veth goes down, its processes live on.

What fencing is for (docs/trainer.md, "Fenced checkpoints"; docs/operator.md, "Fenced
restarts"): the operator starts the next attempt as soon as the survivors have stopped,
while the cut-off rank may still run and try to commit into the run's folder (the volume
stays mounted: a partition of the cluster network, not of the storage).

The story holds rank 0's commit of the first save at or after ``HOLD_AT`` (the trainer's
test hook, ``SPOTRUN_TEST_HOLD_BEFORE_COMMIT``; while it holds, that rank's heartbeat judges
no peer, so its own peer-lost exit cannot end it first), then cuts the master's node off.
The worker's heartbeat loses the store and leaves with exit 86 naming the master's pod;
the operator starts the next attempt on other nodes without waiting for that pod; once
the next attempt's rank 0 has written its fence, the story releases the held commit. The
cut-off rank's commit must then be refused (its own log, read from its node's pod-logs
folder: no kubelet can report it), and the next attempt must have loaded only what its
fence accepted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spotrun_api import contract
from spotrun_dev import node_host, realnodes
from spotrun_dev.waiting import ClusterError, wait_for
from spotrun_trainer import testhooks

# The first save at or after this step is held (attempt 2 of the story resumes near 40).
HOLD_AT = 100
RELEASE_FILE = "release-partition"
EVENTS_FILE = "events"
# The heartbeat's floor in the story: a lost peer is declared within about this long.
PEER_TIMEOUT_SECONDS = 10
HOLDING = re.compile(r"^holding-commit 0 (\d+)$", re.M)


def trainer_env(mount: str) -> list[dict[str, str]]:
    """The container env of a run the partition story holds (``mount``: the checkpoint
    volume's path in the pod, where the release file and the events file live)."""
    return [
        {"name": testhooks.ENV_HOLD_BEFORE_COMMIT, "value": str(HOLD_AT)},
        {"name": testhooks.ENV_RELEASE_FILE, "value": f"{mount}/{RELEASE_FILE}"},
        {"name": testhooks.ENV_EVENTS_FILE, "value": f"{mount}/{EVENTS_FILE}"},
        {"name": contract.ENV_PEER_TIMEOUT_SECONDS, "value": str(PEER_TIMEOUT_SECONDS)},
    ]


def wait_held(folder: Path, timeout: float = 420) -> int:
    """The step whose commit rank 0 now holds (from the trainer's events file)."""
    events = folder / EVENTS_FILE
    found: list[int] = []

    def held() -> bool:
        text = events.read_text() if events.exists() else ""
        found[:] = [int(m) for m in HOLDING.findall(text)]
        return bool(found)

    wait_for(f"rank 0 to hold its commit at step >= {HOLD_AT}", held, timeout=timeout)
    return found[-1]


def cut(name: str) -> None:
    """The node's network goes down; every process on it keeps running."""
    state = realnodes.FleetState.load()
    record = state.nodes.get(name)
    if record is None:
        raise ClusterError(f"{name} is not a real node of this cluster")
    record.cut = True  # a later ensure_real_nodes replaces it, even if a test stops here
    state.save()
    node_host.cut_network(record.node(name))


def wait_fence(folder: Path, epoch: int, timeout: float = 300) -> contract.Fence:
    """The fence attempt ``epoch``'s rank 0 wrote before it loaded anything."""
    path = folder / contract.FENCE_DIR / f"{epoch}.json"
    wait_for(f"the fence of attempt {epoch}", path.exists, timeout=timeout)
    return fence_of(json.loads(path.read_text()))


def fence_of(raw: dict[str, Any]) -> contract.Fence:
    accepted = tuple(
        contract.AcceptedCheckpoint(int(a["step"]), int(a["epoch"]), str(a["manifest_sha256"]))
        for a in raw.get("accepted") or ()
    )
    return contract.Fence(int(raw["epoch"]), accepted, str(raw.get("written_at", "")))


def release(folder: Path) -> None:
    (folder / RELEASE_FILE).touch()


def container_log(node: str, namespace: str, pod: str, container: str = "pytorch") -> str:
    """A container's log as its node's kubelet wrote it (``podLogsDir``): readable while
    the node is cut off from the apiserver."""
    base = realnodes.STATE_DIR / node / "pod-logs"
    files = sorted(base.glob(f"{namespace}_{pod}_*/{container}/*.log"))
    return "".join(f.read_text(errors="replace") for f in files)


def wait_log(node: str, namespace: str, pod: str, pattern: str, timeout: float = 120) -> str:
    """The first line of the container's log that matches ``pattern``."""
    found: list[str] = []

    def logged() -> bool:
        found[:] = [ln for ln in container_log(node, namespace, pod).splitlines()
                    if re.search(pattern, ln)]  # fmt: skip
        return bool(found)

    wait_for(f"{pod} on {node} to log /{pattern}/", logged, timeout=timeout)
    return found[0]


@dataclass(frozen=True)
class CommittedCheckpoint:
    step: int
    epoch: int


def committed(folder: Path) -> list[CommittedCheckpoint]:
    """Every committed ``step-N`` folder with the epoch its manifest names."""
    out = []
    for d in folder.glob(f"{contract.STEP_DIR_PREFIX}*"):
        step = contract.parse_step_dir(d.name)
        marker = d / contract.COMMIT_MARKER
        if step is None or not marker.is_file():
            continue
        manifest = json.loads(marker.read_text())
        out.append(CommittedCheckpoint(step, int(manifest.get(contract.MANIFEST_EPOCH, 0))))
    return sorted(out, key=lambda c: c.step)
