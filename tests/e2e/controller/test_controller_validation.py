"""The apiserver itself rejects bad TrainingRuns (schema + CEL), naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller_helpers import TR, get, training_run

ROOT = Path(__file__).resolve().parents[3]
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("zero-nodes", {"nodes": 0}, "spec.nodes"),
    ("negative-gpus", {"gpusPerNode": -1}, "spec.gpusPerNode"),
    ("capacity-type", {"capacity": {"type": "preemptible"}}, "spec.capacity.type"),
    (
        "duration",
        {"checkpoint": {"volume": {"claimName": "c"}, "interval": "15 minutes"}},
        "spec.checkpoint.interval",
    ),
    ("no-volume", {"checkpoint": {"volume": {}}}, "spec.checkpoint.volume"),
    (
        "two-volumes",
        {"checkpoint": {"volume": {"claimName": "c", "size": "1Gi"}}},
        "spec.checkpoint.volume",
    ),
    ("bad-size", {"checkpoint": {"volume": {"size": "lots"}}}, "spec.checkpoint.volume.size"),
    (
        "rwo-multinode",
        {"checkpoint": {"volume": {"size": "1Gi", "accessMode": "ReadWriteOnce"}}},
        "spec.checkpoint.volume.accessMode",
    ),
    (
        "fallback-on-demand",
        {"capacity": {"type": "on-demand", "onDemandFallbackAfter": "30m"}},
        "spec.capacity.onDemandFallbackAfter",
    ),
    (
        "fallback-duration",
        {"capacity": {"onDemandFallbackAfter": "half an hour"}},
        "spec.capacity.onDemandFallbackAfter",
    ),
    (
        "s3",
        {"checkpoint": {"volume": {"claimName": "c"}, "s3Uri": "https://bucket"}},
        "spec.checkpoint.s3Uri",
    ),
    (
        "relative-path",
        {"checkpoint": {"volume": {"claimName": "c"}, "path": "ckpt"}},
        "spec.checkpoint.path",
    ),
    ("max-failures", {"maxFailures": 0}, "spec.maxFailures"),
    ("budget", {"budget": {"maxUSD": 0}}, "spec.budget.maxUSD"),
    ("contract-env", {"env": [{"name": "SPOTRUN_ATTEMPT", "value": "9"}]}, "spec.env[0].name"),
    ("no-image", {"image": ""}, "spec.image"),
]


@pytest.mark.parametrize(("case", "spec", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_spec_is_rejected_naming_the_field(
    case: str,
    spec: dict[str, Any],
    field: str,
    custom: client.CustomObjectsApi,
    namespace: str,
    crd: dict[str, Any],
) -> None:
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(
            *TR[:2], namespace, TR[2], training_run(case, **spec)
        )
    assert err.value.status == 422
    message = json.loads(err.value.body)["message"]
    assert f"{field}:" in message, message


def test_checkpoint_volume_is_immutable(
    custom: client.CustomObjectsApi,
    namespace: str,
    crd: dict[str, Any],
) -> None:
    custom.create_namespaced_custom_object(*TR[:2], namespace, TR[2], training_run("imm"))
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object(
            *TR[:2],
            namespace,
            TR[2],
            "imm",
            {"spec": {"checkpoint": {"volume": {"claimName": "other"}}}},
        )
    assert err.value.status == 422
    assert "spec.checkpoint.volume" in json.loads(err.value.body)["message"]


def test_defaults_are_applied(
    custom: client.CustomObjectsApi, namespace: str, crd: dict[str, Any]
) -> None:
    body = training_run("defaults")
    for key in ("gpusPerNode", "maxFailures", "nodes"):
        body["spec"].pop(key)
    body["spec"]["checkpoint"] = {"volume": {"claimName": "c"}}
    custom.create_namespaced_custom_object(*TR[:2], namespace, TR[2], body)
    spec = get(custom, namespace, "defaults")["spec"]
    assert (spec["nodes"], spec["gpusPerNode"], spec["maxPreemptions"], spec["maxFailures"]) == (
        1,
        8,
        100,
        3,
    )
    assert spec["capacity"] == {
        "type": "spot",
        "instanceTypes": ["p4d.24xlarge"],
        "warmSpares": 0,
    }
    assert spec["checkpoint"] == {
        "volume": {"claimName": "c"},
        "path": "/checkpoints",
        "interval": "15m",
        "keep": 3,
    }
    assert (spec["terminationGracePeriodSeconds"], spec["suspend"]) == (110, False)


def test_every_example_training_run_is_valid(
    custom: client.CustomObjectsApi,
    namespace: str,
    crd: dict[str, Any],
) -> None:
    """manifests/examples/*.yaml: every TrainingRun passes the apiserver's validation."""
    examples = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
    runs = [
        d
        for p in examples
        for d in yaml.safe_load_all(p.read_text())
        if d and d.get("kind") == "TrainingRun"
    ]
    assert any(r["metadata"]["name"] == "quickstart" for r in runs)
    for run in runs:
        body = {**run, "metadata": {"name": run["metadata"]["name"]}}
        custom.create_namespaced_custom_object(*TR[:2], namespace, TR[2], body, dry_run="All")
