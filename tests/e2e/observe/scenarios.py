"""A TrainingRun's happy path, as the RBAC tests run it under the chart's identity.

The other scenarios are the operator e2e tests themselves (tests/e2e/controller), called
with an operator started under that identity.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client

from controller_helpers import (
    TR,
    complete_all,
    condition,
    create,
    event_reasons,
    running_gang,
    training_run,
    wait_status,
)
from spotrun_trainer.contract import Progress
from spotrun_trainer.progress import patch_body


def report_progress(
    custom: client.CustomObjectsApi, namespace: str, run: str, progress: Progress
) -> None:
    """What rank 0's ProgressReporter sends: a merge patch of status.progress."""
    custom.patch_namespaced_custom_object_status(
        TR[0], TR[1], namespace, TR[2], run, patch_body(progress)
    )


def happy_path(core: client.CoreV1Api, custom: client.CustomObjectsApi, namespace: str) -> None:
    """Created, Running, progress reported, Succeeded; the pod template references a
    ConfigMap, so the operator checks that it exists (kube.missing) before each attempt."""
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "run-config"}, "data": {"run.yaml": "steps: 100\n"}}
    )
    tpl: dict[str, Any] = {
        "spec": {"volumes": [{"name": "config", "configMap": {"name": "run-config"}}]}
    }
    create(custom, namespace, training_run("happy", podTemplate=tpl))
    gang = running_gang(core, namespace, "happy", 1)
    st = wait_status(
        custom, namespace, "happy", "phase Running", lambda s: s.get("phase") == "Running"
    )
    assert (st["attempt"], st["preemptions"], st["failures"]) == (1, 0, 0)
    started = st["attempts"][0]["startedAt"]
    report_progress(
        custom,
        namespace,
        "happy",
        Progress(
            step=100,
            checkpoint_step=100,
            checkpoint_time=started,
            checkpoint_path="/checkpoints/step-100",
            samples_per_second=512.0,
            attempt=1,
        ),
    )
    complete_all(core, namespace, gang)
    st = wait_status(
        custom, namespace, "happy", "phase Succeeded", lambda s: s.get("phase") == "Succeeded"
    )
    assert condition(st, "Succeeded")["reason"] == "Completed"
    assert st["progress"]["checkpointStep"] == 100
    assert core.read_namespaced_service_account("happy-trainer", namespace)
    reasons = event_reasons(core, namespace, "happy")
    assert reasons[0] == "AttemptCreated" and reasons[-1] == "Succeeded"
