"""The operator <-> trainer contract end to end: the env an attempt's pod gets, read by the
trainer's own config layer; the spec fields behind it; the CRD rules that guard them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from controller_fakes import REF, spec

from spotrun_api import contract
from spotrun_api.spec import parse_spec
from spotrun_lm.config import load_config
from spotrun_operator.model import builders as b

CRD = Path(__file__).resolve().parents[3] / "crds" / "trainingruns.spotrun.dev.yaml"


def _job(**over: Any) -> dict[str, Any]:
    return b.build_pytorchjob(
        REF, parse_spec(spec(**over)), attempt=2, capacity_type="spot", interval_seconds=600
    )


def _env(job: dict[str, Any]) -> dict[str, str]:
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    return {e["name"]: e["value"] for e in pod["containers"][0]["env"] if "value" in e}


def _spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    props: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    return dict(props["spec"]["properties"])


def test_grace_period_reaches_the_trainer() -> None:
    job = _job(terminationGracePeriodSeconds=45)
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    env = _env(job)
    assert pod["terminationGracePeriodSeconds"] == 45
    assert env[contract.ENV_TERMINATION_GRACE_SECONDS] == "45"
    cfg = load_config([], env=env)
    assert cfg.preemption.grace_period_seconds == 45.0


def test_grace_default_is_one_number_everywhere() -> None:
    s = spec()
    del s["terminationGracePeriodSeconds"]
    parsed = parse_spec(s)
    assert parsed.termination_grace_period_seconds == contract.DEFAULT_TERMINATION_GRACE_SECONDS
    job = b.build_pytorchjob(REF, parsed, attempt=1, capacity_type="spot", interval_seconds=60)
    assert _env(job)[contract.ENV_TERMINATION_GRACE_SECONDS] == "110"
    crd_default = _spec_schema()["terminationGracePeriodSeconds"]["default"]
    assert crd_default == contract.DEFAULT_TERMINATION_GRACE_SECONDS
    assert load_config([], env={}).preemption.grace_period_seconds == crd_default


@pytest.mark.parametrize(
    ("over", "procs"),
    [
        ({}, 8),  # one rank per GPU by default
        ({"gpusPerNode": 4}, 4),
        ({"gpusPerNode": 0}, 1),  # no GPUs: one process
        ({"gpusPerNode": 8, "procsPerNode": 1}, 1),
        ({"gpusPerNode": 0, "procsPerNode": 3}, 3),
    ],
)
def test_procs_per_node_reaches_the_trainer(over: dict[str, Any], procs: int) -> None:
    job = _job(**over)
    env = _env(job)
    assert parse_spec(spec(**over)).procs_per_node == procs
    assert env[contract.ENV_PROCS_PER_NODE] == str(procs)
    assert job["spec"]["nprocPerNode"] == str(procs)  # PET_NPROC_PER_NODE for plain torchrun
    assert load_config([], env=env).nproc_per_node == procs


def test_every_contract_variable_is_set_and_read() -> None:
    env = _env(_job(checkpoint={"volume": {"claimName": "c"}, "s3Uri": "s3://b/p"}))
    assert set(contract.ALL_ENV) <= set(env)
    cfg = load_config([], env=env)
    assert cfg.checkpoint.interval_seconds == 600.0 and cfg.checkpoint.s3_uri == "s3://b/p"
    assert cfg.checkpoint.dir == "/checkpoints" and cfg.checkpoint.keep == 3


@pytest.mark.parametrize("bad", [0, -1])
def test_procs_per_node_below_one_is_rejected(bad: int) -> None:
    with pytest.raises(ValueError, match=r"spec\.procsPerNode"):
        parse_spec(spec(procsPerNode=bad))


@pytest.mark.parametrize("interval", ["0s", "0m", "500ms", "999ms", "0h0m0s"])
def test_interval_under_a_second_is_rejected_naming_the_field(interval: str) -> None:
    with pytest.raises(ValueError, match=r"spec\.checkpoint\.interval"):
        parse_spec(spec(checkpoint={"volume": {"claimName": "c"}, "interval": interval}))


@pytest.mark.parametrize("interval", ["1s", "1000ms", "15m", "1h30m", "auto"])
def test_intervals_of_a_second_or_more_are_accepted(interval: str) -> None:
    s = parse_spec(spec(checkpoint={"volume": {"claimName": "c"}, "interval": interval}))
    assert s.checkpoint.interval == interval


def test_malformed_interval_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"spec\.checkpoint\.interval: not a duration"):
        parse_spec(spec(checkpoint={"volume": {"claimName": "c"}, "interval": "15 minutes"}))


def test_crd_rejects_short_intervals_and_documents_procs_per_node() -> None:
    props = _spec_schema()
    rules = props["checkpoint"]["properties"]["interval"]["x-kubernetes-validations"]
    short = [r for r in rules if "duration(self) >= duration('1s')" in r["rule"]]
    assert len(short) == 1 and "'auto'" in short[0]["rule"]
    assert "spec.checkpoint.interval" in short[0]["message"]
    procs = props["procsPerNode"]
    assert procs["type"] == "integer" and procs["minimum"] == 1
    assert "default" not in procs, "the default follows gpusPerNode: the operator applies it"
    assert "gpusPerNode" in procs["description"]
    chart_copy = CRD.parents[1] / "charts" / "spotrun" / "files" / "crds" / CRD.name
    assert chart_copy.read_text() == CRD.read_text(), "run hack/sync-chart-crds.sh"
