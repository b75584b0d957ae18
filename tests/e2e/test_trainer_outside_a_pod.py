"""The real trainer, run as a process on this machine (a user's workstation, a test
harness) with only ``KUBECONFIG`` naming the cluster, reports its progress into its
TrainingRun's status on the real apiserver: the client's standard loading order
(in-cluster, then KUBECONFIG, then ~/.kube/config)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from kubernetes import client

from controller_helpers import create, status, training_run
from kube_helpers import poll
from spotrun_api import contract
from spotrun_dev.cluster import LocalCluster

ARGS = (
    "--max-steps=4",
    "--batch-size=8",
    "--model.n-layer=2",
    "--model.n-embd=32",
    "--model.seq-len=16",
    "--data.num-samples=64",
    "--report.progress-interval-seconds=0.1",
)


def test_a_trainer_outside_a_pod_reports_progress_through_kubeconfig(
    cluster: LocalCluster,
    custom: client.CustomObjectsApi,
    namespace: str,
    crd: dict[str, Any],
    tmp_path: Path,
) -> None:
    create(custom, namespace, training_run("workstation"))
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),  # no ~/.kube/config: KUBECONFIG alone must be enough
        "KUBECONFIG": str(cluster.kubeconfig),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        contract.ENV_RUN: "workstation",
        contract.ENV_NAMESPACE: namespace,
        contract.ENV_ATTEMPT: "1",
        contract.ENV_PROCS_PER_NODE: "1",
        contract.ENV_CHECKPOINT_DIR: str(tmp_path / "ckpt"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "spotrun_lm", *ARGS],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == contract.EXIT_DONE, done.stdout[-3000:] + done.stderr[-3000:]
    progress = poll(
        "status.progress written by the trainer",
        lambda: status(custom, namespace, "workstation").get("progress"),
        timeout=30,
    )
    assert int(progress["step"]) == 4, progress
    assert progress.get("attempt") == 1, progress
    assert "progress not reported" not in done.stderr + done.stdout
