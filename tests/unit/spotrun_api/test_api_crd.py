"""The CRD is generated from the typed model (``python -m spotrun_dev.crdgen``) and the
committed file is exactly what the generator writes, so the two cannot drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from spotrun_api.base import Int32, Time, cel, crd_extra
from spotrun_api.spec import TrainingRunSpec
from spotrun_dev import crdgen, paths

ROOT = Path(__file__).resolve().parents[3]
CRD = ROOT / "crds" / "trainingruns.spotrun.dev.yaml"


def _schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _spec() -> dict[str, Any]:
    spec: dict[str, Any] = _schema()["properties"]["spec"]
    return spec


def _keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in _keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in _keys(v)}
    return set()


def test_the_committed_crd_is_the_generators_output() -> None:
    assert CRD.read_text() == crdgen.render(), "run make crds"
    assert CRD.read_text().startswith("# The TrainingRun CRD, GENERATED")


def test_the_schema_is_structural() -> None:
    """No $ref (a CRD forbids them), no pydantic titles, no null types."""
    keys = _keys(_schema())
    assert not keys & {"$ref", "$defs", "title", "nullable"}
    assert '"null"' not in str(_schema()) and "'null'" not in str(_schema())


def test_cel_rules_and_descriptions_come_from_the_model() -> None:
    spec = _spec()
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert "!has(self.elasticity) || self.elasticity.minNodes <= self.nodes" in rules
    volume = spec["properties"]["checkpoint"]["properties"]["volume"]
    assert volume["x-kubernetes-validations"][2]["rule"] == "self == oldSelf"
    interval = spec["properties"]["checkpoint"]["properties"]["interval"]
    assert interval["x-kubernetes-validations"][0]["rule"] == (
        "self == 'auto' || self.matches('^([0-9]+(ms|s|m|h))+$')"
    )
    nodes = TrainingRunSpec.model_fields["nodes"]
    assert spec["properties"]["nodes"]["description"] == nodes.description
    assert _schema()["description"].startswith("TrainingRun runs a PyTorch training job")
    assert "\n" not in _schema()["description"]  # a docstring's line breaks are not kept


def test_formats_defaults_and_markers() -> None:
    props = _spec()["properties"]
    status = _schema()["properties"]["status"]["properties"]
    assert props["terminationGracePeriodSeconds"]["format"] == "int64"
    assert props["nodes"] == {**props["nodes"], "format": "int32", "default": 1}
    assert status["startTime"]["format"] == "date-time"
    assert "default" not in status["progress"]["properties"]["step"]
    assert props["capacity"]["default"] == {}
    assert props["podTemplate"]["x-kubernetes-preserve-unknown-fields"] is True
    assert props["env"]["items"]["x-kubernetes-preserve-unknown-fields"] is True
    cpu = props["resources"]["properties"]["limits"]["additionalProperties"]
    assert cpu["x-kubernetes-int-or-string"] is True
    assert cpu["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    assert props["budget"]["properties"]["maxUSD"]["exclusiveMinimum"] is True
    assert _schema()["required"] == ["spec"]


def test_warm_spares_are_bounded_by_the_apiserver_and_their_cost_has_fields() -> None:
    warm = _spec()["properties"]["capacity"]["properties"]["warmSpares"]
    assert (warm["minimum"], warm["maximum"], warm["default"], warm["format"]) == (
        0,
        16,
        0,
        "int32",
    )
    assert "whole node" in warm["description"]
    status = _schema()["properties"]["status"]["properties"]
    assert {"sparesUSD", "spareNodeSeconds"} <= set(status["cost"]["properties"])
    assert status["spares"]["properties"]["pods"]["x-kubernetes-list-map-keys"] == ["uid"]


class _Toy(BaseModel):
    model_config = ConfigDict(json_schema_extra=crd_extra(cel("self.n > 0", "positive")))

    n: Int32 | None = Field(None, description="A\n   number.")
    at: Time = Field(description="When.")
    size: int | str = Field(0, description="A quantity.")
    items: list[str] = Field(default_factory=list, json_schema_extra=crd_extra(list_type="set"))


def test_structural_turns_a_model_into_a_crd_schema() -> None:
    raw = _Toy.model_json_schema(by_alias=True)
    assert crdgen.structural(raw, raw.get("$defs", {})) == {
        "type": "object",
        "required": ["at"],
        "x-kubernetes-validations": [{"rule": "self.n > 0", "message": "positive"}],
        "properties": {
            "n": {"type": "integer", "format": "int32", "description": "A number."},
            "at": {"type": "string", "format": "date-time", "description": "When."},
            "size": {
                "default": 0,
                "description": "A quantity.",
                "x-kubernetes-int-or-string": True,
                "anyOf": [{"type": "integer"}, {"type": "string"}],
            },
            "items": {
                "type": "array",
                "x-kubernetes-list-type": "set",
                "items": {"type": "string"},
            },
        },
    }


def test_a_union_a_crd_cannot_say_is_refused() -> None:
    class Bad(BaseModel):
        x: int | list[int]

    raw = Bad.model_json_schema()
    with pytest.raises(ValueError, match="cannot say"):
        crdgen.structural(raw, {})


def test_a_key_the_generator_does_not_know_is_refused() -> None:
    """A misspelt rule key (or a schema keyword a CRD lacks) fails loudly, never vanishes."""
    node = {"type": "string", "x-kubernetes-validations": [{"rule": "true", "mesage": "m"}]}
    with pytest.raises(ValueError, match="mesage"):
        crdgen.structural(node, {})
    with pytest.raises(ValueError, match="const"):
        crdgen.structural({"type": "string", "const": "x"}, {})


def test_check_fails_on_any_difference_and_a_run_fixes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "crds" / CRD.name
    stale.parent.mkdir()
    stale.write_text(CRD.read_text().replace("Optimizer steps done.", "Steps."))
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(crdgen, "CRD_PATH", stale)
    assert crdgen.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "Steps." in err and "Optimizer steps done." in err  # the diff, both sides
    assert "run make crds" in err
    assert crdgen.main([]) == 0
    assert stale.read_text() == CRD.read_text()
    assert crdgen.main(["--check"]) == 0


def test_api_imports_without_kopf_kubernetes_or_torch() -> None:
    code = (
        "import sys, spotrun_api, spotrun_api.spec, spotrun_api.status, spotrun_api.contract\n"
        "import spotrun_api.resource, spotrun_trainer\n"
        "bad = sorted(m for m in ('kopf', 'kubernetes', 'torch', 'spotrun_operator') "
        "if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
