"""A TrainingRun's happy path, as the RBAC tests run it under the chart's identity.

The other scenarios are the operator e2e tests themselves (tests/e2e/controller), called
with an operator started under that identity.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client

from controller_helpers import (
    complete_all,
    condition,
    create,
    event_reasons,
    running_gang,
    training_run,
    wait_status,
)


def happy_path(core: client.CoreV1Api, custom: client.CustomObjectsApi, namespace: str) -> None:
    """Created, Running, Succeeded; the pod template references a
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
    complete_all(core, namespace, gang)
    st = wait_status(
        custom, namespace, "happy", "phase Succeeded", lambda s: s.get("phase") == "Succeeded"
    )
    assert condition(st, "Succeeded")["reason"] == "Completed"
    assert core.read_namespaced_service_account("happy-trainer", namespace)
    reasons = event_reasons(core, namespace, "happy")
    assert reasons[0] == "AttemptCreated" and reasons[-1] == "Succeeded"
