"""The typed TrainingRun model: defaults in one place, camelCase JSON round trips."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from spotrun_api import Outcome, Phase
from spotrun_api.base import to_json
from spotrun_api.contract import (
    DEFAULT_CHECKPOINT_INTERVAL,
    DEFAULT_CHECKPOINT_INTERVAL_SECONDS,
    DEFAULT_TERMINATION_GRACE_SECONDS,
)
from spotrun_api.spec import InvalidSpec, parse_spec
from spotrun_api.status import OPERATOR_FIELDS, parse_status

ROOT = Path(__file__).resolve().parents[3]
STATUS: dict[str, Any] = {
    "phase": "Recovering",
    "message": "preempted",
    "observedGeneration": 2,
    "attempt": 2,
    "preemptions": 1,
    "failures": 0,
    "queuePreemptions": 1,
    "startTime": "2026-05-01T12:00:00Z",
    "lastPreemption": {"attempt": 1, "time": "2026-05-01T13:00:00Z", "signal": "sigterm"},
    "progress": {"step": 480, "checkpointStep": 450, "samplesPerSecond": 12.5, "attempt": 1},
    "cost": {"spotUSD": 1.5, "totalUSD": 1.5, "updatedAt": "2026-05-01T13:00:00Z"},
    "display": {"cost": "$1.50", "last": "sigterm a1", "lastAt": "2026-05-01T13:00:00Z"},
    "conditions": [
        {
            "type": "Running",
            "status": "False",
            "reason": "Recovering",
            "message": "m",
            "lastTransitionTime": "2026-05-01T13:00:00Z",
            "observedGeneration": 2,
        }
    ],
    "attempts": [
        {
            "attempt": 1,
            "outcome": "Preempted",
            "podUIDs": ["a", "b"],
            "spotUSD": 1.5,
            "onDemandEquivalentUSD": 4.5,
            "interruptedNodes": ["n1"],
            "checkpointIntervalSeconds": 900,
            "startStep": 0,
            "endStep": 480,
        },
        {"attempt": 2, "capacityType": "spot", "createdAt": "2026-05-01T13:00:05Z"},
    ],
    "archived": {"attempts": 3, "spotUSD": 2.0, "gpuHours": 10.0},
    "spares": {
        "replicas": 1,
        "image": "i",
        "pods": [
            {
                "name": "r-spares-x",
                "uid": "u",
                "node": "n9",
                "instanceType": "p4d.24xlarge",
                "capacityType": "spot",
                "since": "2026-05-01T12:30:00Z",
            }
        ],
        "endedNodeSeconds": 60.0,
        "endedUSD": 0.2,
    },
}


def test_status_json_round_trips_exactly() -> None:
    status = parse_status(STATUS)
    assert status.phase is Phase.RECOVERING
    assert status.attempts is not None and status.attempts[0].outcome is Outcome.PREEMPTED
    assert status.attempts[0].pod_uids == ["a", "b"] and status.attempts[0].spot_usd == 1.5
    assert to_json(status) == STATUS
    assert json.loads(json.dumps(to_json(status))) == STATUS  # enums are plain strings


def test_the_operator_never_owns_progress() -> None:
    assert "progress" not in OPERATOR_FIELDS
    assert set(OPERATOR_FIELDS) == set(STATUS) - {"progress"} | {"completionTime"}


def test_spec_defaults_live_in_one_place() -> None:
    s = parse_spec({"image": "i", "checkpoint": {"volume": {"claimName": "c"}}})
    assert (s.nodes, s.gpus_per_node, s.procs_per_node) == (1, 8, 8)
    assert s.termination_grace_period_seconds == DEFAULT_TERMINATION_GRACE_SECONDS == 110
    assert s.checkpoint.interval == DEFAULT_CHECKPOINT_INTERVAL
    assert DEFAULT_CHECKPOINT_INTERVAL_SECONDS == 900
    assert s.capacity.type == "spot" and s.capacity.instance_types == ["p4d.24xlarge"]
    assert (s.max_preemptions, s.max_failures, s.max_usd, s.fallback_seconds) == (
        100,
        3,
        None,
        None,
    )
    assert s.checkpoint.volume.effective_access_mode == "ReadWriteMany"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("not an object", "spec: must be an object, got str"),
        ({"checkpoint": {"volume": {"claimName": "c"}}}, "spec.image: Field required"),
        (
            {"image": "i", "checkpoint": {"volume": {"claimName": "c", "size": "1Gi"}}},
            "spec.checkpoint.volume: set exactly one of claimName or size",
        ),
    ],
)
def test_invalid_specs_name_the_field(spec: Any, message: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        parse_spec(spec)
    assert message in str(err.value)


ELASTIC_BASE: dict[str, Any] = {
    "image": "i",
    "nodes": 4,
    "checkpoint": {"volume": {"claimName": "c"}},
}


def test_elasticity_is_optional_and_wait_before_shrink_defaults_to_ten_minutes() -> None:
    assert parse_spec(ELASTIC_BASE).elasticity is None
    assert parse_spec(ELASTIC_BASE).shrink_after_seconds is None
    s = parse_spec({**ELASTIC_BASE, "elasticity": {"minNodes": 2}})
    assert s.elasticity is not None and s.elasticity.min_nodes == 2
    assert (s.elasticity.wait_before_shrink, s.shrink_after_seconds) == ("10m", 600.0)


@pytest.mark.parametrize(
    ("elasticity", "message"),
    [
        ({"minNodes": 5}, "spec.elasticity: minNodes 5 must be at most spec.nodes 4"),
        ({"minNodes": 0}, "spec.elasticity.minNodes: Input should be greater than or equal to 1"),
        ({}, "spec.elasticity.minNodes: Field required"),
        ({"minNodes": 1, "waitBeforeShrink": "ten"}, "spec.elasticity.waitBeforeShrink: not a"),
    ],
)
def test_bad_elasticity_names_the_field(elasticity: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        parse_spec({**ELASTIC_BASE, "elasticity": elasticity})
    assert message in str(err.value)


def test_the_crd_rejects_min_nodes_above_nodes_naming_the_field() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "trainingruns.spotrun.dev.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rule = next(r for r in spec["x-kubernetes-validations"] if "elasticity" in r["rule"])
    assert rule["rule"] == "!has(self.elasticity) || self.elasticity.minNodes <= self.nodes"
    assert rule["fieldPath"] == ".elasticity.minNodes"
    assert "spec.elasticity.minNodes" in rule["message"]
    elasticity = spec["properties"]["elasticity"]
    assert elasticity["required"] == ["minNodes"]
    assert elasticity["properties"]["minNodes"]["minimum"] == 1


@pytest.mark.parametrize(
    ("warm", "message"),
    [
        (-1, "spec.capacity.warmSpares: Input should be greater than or equal to 0"),
        (17, "spec.capacity.warmSpares: Input should be less than or equal to 16"),
        ("two", "spec.capacity.warmSpares: Input should be a valid integer"),
    ],
)
def test_bad_warm_spares_names_the_field(warm: Any, message: str) -> None:
    raw = {"image": "i", "checkpoint": {"volume": {"claimName": "c"}}}
    with pytest.raises(InvalidSpec) as err:
        parse_spec({**raw, "capacity": {"warmSpares": warm}})
    assert message in str(err.value)
    assert parse_spec(raw).capacity.warm_spares == 0  # off unless asked for
    assert parse_spec({**raw, "capacity": {"warmSpares": 16}}).capacity.warm_spares == 16
