"""Application failures spend the failure budget (never the preemption one);
configuration errors fail the run with the reason in plain words."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from controller_helpers import (
    condition,
    create,
    env,
    event_reasons,
    jobs,
    master,
    running_gang,
    status,
    training_run,
    wait_status,
)
from kube_helpers import holds
from spotrun_dev import inject


def test_exit1_is_retried_then_fails_the_run_when_max_failures_is_spent(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator: Any,
) -> None:
    create(custom, namespace, training_run("crash", maxFailures=2))
    gang = running_gang(core, namespace, "crash", 1)
    inject.fail_pod(core, namespace, master(gang).metadata.name, "exit1")
    gang2 = running_gang(core, namespace, "crash", 2)
    assert env(master(gang2))["SPOTRUN_ATTEMPT"] == "2"
    st = status(custom, namespace, "crash")
    assert (st["failures"], st["preemptions"]) == (1, 0)
    assert st["attempts"][0]["outcome"] == "Failed" and "exited 1" in st["attempts"][0]["message"]

    inject.fail_pod(core, namespace, gang2[1].metadata.name, "exit1")
    st = wait_status(
        custom, namespace, "crash", "phase Failed", lambda s: s.get("phase") == "Failed"
    )
    assert (st["failures"], st["preemptions"], st["attempt"]) == (2, 0, 2)
    failed = condition(st, "Failed")
    assert failed["reason"] == "MaxFailuresReached" and "maxFailures" in failed["message"]
    holds("no attempt 3", lambda: "crash-a3" not in jobs(custom, namespace, "crash"), 3)
    assert event_reasons(core, namespace, "crash").count("ApplicationFailure") == 2


def test_oomkilled_is_a_failure_not_a_preemption(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator: Any,
) -> None:
    create(custom, namespace, training_run("oom"))
    gang = running_gang(core, namespace, "oom", 1)
    inject.fail_pod(core, namespace, gang[1].metadata.name, "oom")
    running_gang(core, namespace, "oom", 2)
    st = wait_status(custom, namespace, "oom", "attempt 2", lambda s: s.get("attempt") == 2)
    assert (st["failures"], st["preemptions"]) == (1, 0)
    assert st["attempts"][0]["reason"] == "OOMKilled"


def test_image_pull_error_fails_the_run_with_the_message(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator: Any,
) -> None:
    create(custom, namespace, training_run("pull", image="registry.invalid/trainer:nope"))
    gang = running_gang(core, namespace, "pull", 1)
    inject.fail_pod(core, namespace, master(gang).metadata.name, "imagepull")
    st = wait_status(
        custom, namespace, "pull", "phase Failed", lambda s: s.get("phase") == "Failed", timeout=30
    )
    failed = condition(st, "Failed")
    assert failed["reason"] == "ConfigurationError"
    assert "ImagePullBackOff" in failed["message"]
    assert "registry.invalid/trainer:nope" in failed["message"]
    assert (st["failures"], st["preemptions"], st["attempt"]) == (0, 0, 1)
    assert "ConfigurationError" in event_reasons(core, namespace, "pull")


def test_missing_secret_fails_the_run_before_any_pod(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator: Any,
) -> None:
    tpl = {"spec": {"volumes": [{"name": "creds", "secret": {"secretName": "hf-token"}}]}}
    create(custom, namespace, training_run("nosecret", podTemplate=tpl))
    st = wait_status(
        custom,
        namespace,
        "nosecret",
        "phase Failed",
        lambda s: s.get("phase") == "Failed",
        timeout=30,
    )
    failed = condition(st, "Failed")
    assert failed["reason"] == "ConfigurationError" and "Secret hf-token" in failed["message"]
    assert jobs(custom, namespace, "nosecret") == []
