"""Bad input in the fields spotrun passes through to the pods (podTemplate, env): a run
whose PyTorchJob or pods the apiserver would refuse ends Failed with reason InvalidSpec at
once, the apiserver's message naming the field, and a Warning event; no PyTorchJob is
left behind and the operator keeps working (no reconcile retried forever)."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
from kubernetes import client

from controller_helpers import (
    condition,
    create,
    event_reasons,
    jobs,
    running_gang,
    training_run,
    wait_status,
)
from controller_helpers import (
    status as get_status,
)
from kube_helpers import holds, poll

# (run name, spec fields, text the Failed message must hold: the field at fault)
WRONG_TYPES: list[tuple[str, dict[str, Any], str]] = [
    ("selector-string", {"podTemplate": {"spec": {"nodeSelector": "gpu"}}}, "nodeSelector"),
    ("selector-int", {"podTemplate": {"spec": {"nodeSelector": {"tier": 1}}}}, "nodeSelector"),
    ("tolerations-string", {"podTemplate": {"spec": {"tolerations": "all"}}}, "tolerations"),
    (
        "toleration-seconds",
        {"podTemplate": {"spec": {"tolerations": [{"key": "k", "tolerationSeconds": "soon"}]}}},
        "tolerationSeconds",
    ),
    ("volumes-object", {"podTemplate": {"spec": {"volumes": {"name": "v"}}}}, "volumes"),
    (
        "container-env-string",
        {"podTemplate": {"spec": {"containers": [{"name": "pytorch", "env": "A=1"}]}}},
        "env",
    ),
    (
        "limits-list",
        {
            "podTemplate": {
                "spec": {
                    "containers": [{"name": "pytorch", "resources": {"limits": {"cpu": ["1"]}}}]
                }
            }
        },
        "limits",
    ),
    ("env-value-int", {"env": [{"name": "SEED", "value": 7}]}, "env"),
    ("labels-int", {"podTemplate": {"metadata": {"labels": {"team": 7}}}}, "labels"),
]
IMPOSSIBLE: list[tuple[str, dict[str, Any], str]] = [
    (
        "toleration-operator",
        {"podTemplate": {"spec": {"tolerations": [{"key": "k", "operator": "Sometimes"}]}}},
        "tolerations[0].operator",
    ),
    (
        "negative-cpu",
        {
            "podTemplate": {
                "spec": {
                    "containers": [{"name": "pytorch", "resources": {"limits": {"cpu": "-1"}}}]
                }
            }
        },
        "resources.limits[cpu]",
    ),
    (
        "requests-over-limits",
        {
            "podTemplate": {
                "spec": {
                    "containers": [
                        {
                            "name": "pytorch",
                            "resources": {
                                "requests": {"memory": "2Gi"},
                                "limits": {"memory": "1Gi"},
                            },
                        }
                    ]
                }
            }
        },
        "resources.requests",
    ),
    (
        "volume-mode",
        {
            "podTemplate": {
                "spec": {
                    "volumes": [
                        {
                            "name": "v",
                            "secret": {"secretName": "s", "optional": True, "defaultMode": 4096},
                        }
                    ]
                }
            }
        },
        "secret.defaultMode",
    ),
    (
        "selector-key",
        {"podTemplate": {"spec": {"nodeSelector": {"bad key!": "x"}}}},
        "nodeSelector",
    ),
    (
        "sidecar-no-image",
        {"podTemplate": {"spec": {"containers": [{"name": "sidecar"}]}}},
        "image",
    ),
    ("env-value-from-empty", {"env": [{"name": "TOKEN", "valueFrom": {}}]}, "valueFrom"),
]


def _has_event(core: client.CoreV1Api, namespace: str, name: str) -> bool:
    return "InvalidSpec" in event_reasons(core, namespace, name)


def _assert_invalid_spec(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    cases: list[tuple[str, dict[str, Any], str]],
) -> None:
    for name, spec, _ in cases:
        create(custom, namespace, training_run(name, **spec))
    for name, _, field in cases:
        st = wait_status(
            custom,
            namespace,
            name,
            f"{name}: phase Failed",
            lambda s: s.get("phase") == "Failed",
            timeout=30,
        )
        failed = condition(st, "Failed")
        assert failed["reason"] == "InvalidSpec", (name, failed)
        assert field in failed["message"], (name, failed["message"])
        # The event follows the status write.
        poll(f"{name}: event InvalidSpec", partial(_has_event, core, namespace, name), 10)
        assert jobs(custom, namespace, name) == [], name


@pytest.fixture
def operator(operator_factory: Any) -> Any:
    """The operator as the chart runs it with rbac.podDryRun: pods are dry-run before each
    attempt, so impossible pod values fail the run at once (wrong types need no grant)."""
    return operator_factory("--pod-dry-run").start()


@pytest.mark.parametrize(
    "cases",
    [WRONG_TYPES, IMPOSSIBLE],
    ids=["wrong-types", "impossible-values"],
)
def test_bad_passthrough_fields_fail_the_run_as_invalid_spec(
    cases: list[tuple[str, dict[str, Any], str]],
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator: Any,
) -> None:
    _assert_invalid_spec(core, custom, namespace, cases)
    # The operator is still healthy: a good run beside the bad ones gets its gang.
    create(custom, namespace, training_run("good"))
    running_gang(core, namespace, "good", 1)


def test_a_full_quota_is_not_a_verdict_on_the_spec(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator: Any,
) -> None:
    """The pod dry run is refused for lack of room, not for the spec: the attempt is
    created and waits for room (as without the check), and gets it once room is made."""
    quota = {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}
    core.create_namespaced_resource_quota(namespace, quota)
    create(custom, namespace, training_run("roomless"))
    poll("attempt 1 created", lambda: jobs(custom, namespace, "roomless") == ["roomless-a1"], 30)
    holds(
        "the run is not Failed",
        lambda: get_status(custom, namespace, "roomless").get("phase") != "Failed",
        5,
    )
    core.delete_namespaced_resource_quota("no-pods", namespace)
    running_gang(core, namespace, "roomless", 1)


# Values only pod validation catches, in the top-level spec.resources (valid quantities the
# CRD accepts) as well as passed through in the podTemplate.
POD_ONLY: list[tuple[str, dict[str, Any], str]] = [
    (
        "spec-requests-over-limits",
        {"resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}},
        "resources.requests",
    ),
    *[case for case in IMPOSSIBLE if case[0] in ("toleration-operator", "negative-cpu")],
]


def test_without_pod_dry_runs_a_pod_the_apiserver_refuses_still_fails_the_run(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator_factory: Any,
) -> None:
    """The default operator may not create pods (least privilege), so the training operator
    meets the refusal: the operator reads its FailedCreatePod event on the attempt's
    PyTorchJob and fails the run as InvalidSpec with the apiserver's message."""
    operator_factory().start()
    for name, spec, _ in POD_ONLY:
        create(custom, namespace, training_run(name, **spec))
    for name, _, field in POD_ONLY:
        st = wait_status(
            custom, namespace, name, f"{name}: Failed", lambda s: s.get("phase") == "Failed", 60
        )
        failed = condition(st, "Failed")
        assert failed["reason"] == "InvalidSpec", (name, failed)
        assert field in failed["message"] and "is invalid" in failed["message"], failed
        assert f"rejected Pod of PyTorchJob {name}-a1" in failed["message"], failed
        poll(f"{name}: event InvalidSpec", partial(_has_event, core, namespace, name), 10)
        poll(f"{name}: its PyTorchJob removed", lambda n=name: jobs(custom, namespace, n) == [], 30)
    create(custom, namespace, training_run("good"))
    running_gang(core, namespace, "good", 1)
