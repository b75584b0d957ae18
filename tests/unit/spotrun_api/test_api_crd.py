"""The CRD and the typed model cannot drift: their schemas are equal field for field.

Compared: property names, types, required fields, defaults, enums, descriptions and the
bounds (minimum/maximum, lengths, item and property counts, patterns). The CRD alone
carries what the model cannot say: CEL rules, formats, printer columns and the
``x-kubernetes-*`` markers (list types, int-or-string, preserved unknown fields).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter

from spotrun_api.spec import TrainingRunSpec
from spotrun_api.status import Progress, TrainingRunStatus

ROOT = Path(__file__).resolve().parents[3]
CRD = ROOT / "crds" / "trainingruns.spotrun.dev.yaml"
COMPARED = (
    "type",
    "description",
    "default",
    "enum",
    "required",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "maxProperties",
    "pattern",
)


def _crd_root() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def norm_crd(node: dict[str, Any]) -> dict[str, Any]:
    """The compared part of a CRD schema node."""
    out = {k: node[k] for k in COMPARED if k in node}
    if "required" in out:
        out["required"] = sorted(out["required"])  # a set
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = "int-or-string"
    if out.pop("exclusiveMinimum", False):
        out["exclusiveMinimum"] = out.pop("minimum")
    if node.get("x-kubernetes-preserve-unknown-fields") and "properties" not in node:
        out["open"] = True
    if "properties" in node:
        out["properties"] = {k: norm_crd(v) for k, v in node["properties"].items()}
    if "items" in node:
        out["items"] = norm_crd(node["items"])
    if isinstance(node.get("additionalProperties"), dict):
        out["values"] = norm_crd(node["additionalProperties"])
    return out


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline ``$ref`` and collapse ``anyOf [X, null]`` (an optional field) into X; the
    referring field's keys (its description, default) win over the definition's."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**_resolve(target, defs), **node}
    variants = [v for v in node.get("anyOf", []) if v.get("type") != "null"]
    if "anyOf" in node and len(variants) == 1:
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        node = {**_resolve(variants[0], defs), **rest}
    return node


def norm_model(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """The compared part of a pydantic JSON schema node, shaped like :func:`norm_crd`."""
    node = _resolve(node, defs)
    types = sorted(v.get("type", "") for v in node.get("anyOf", []))
    out = {k: node[k] for k in COMPARED if k in node}
    if "required" in out:
        out["required"] = sorted(out["required"])
    if types == ["integer", "string"]:
        out["type"] = "int-or-string"
        out.update({k: v for s in node["anyOf"] for k, v in s.items() if k == "pattern"})
    if out.get("default") is None or out.get("default") == []:
        out.pop("default", None)  # an optional field: unset, not a CRD default
    if (
        out.get("type") == "object"
        and "properties" not in node
        and node.get("additionalProperties", True) is True
    ):
        out["open"] = True  # dict[str, Any]: x-kubernetes-preserve-unknown-fields
    if "properties" in node:
        out["properties"] = {k: norm_model(v, defs) for k, v in node["properties"].items()}
    if "items" in node:
        out["items"] = norm_model(node["items"], defs)
    if isinstance(node.get("additionalProperties"), dict):
        out["values"] = norm_model(node["additionalProperties"], defs)
    return out


def _model_schema(model: Any) -> dict[str, Any]:
    schema: dict[str, Any] = TypeAdapter(model).json_schema(by_alias=True)
    return norm_model(schema, schema.get("$defs", {}))


def _diff(a: Any, b: Any, path: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in {'CRD' if k in a else 'model'}")
            else:
                out.extend(_diff(a[k], b[k], f"{path}.{k}"))
        return out
    return [] if a == b else [f"{path}: CRD {a!r} != model {b!r}"]


@pytest.mark.parametrize(
    ("field", "model"), [("spec", TrainingRunSpec), ("status", TrainingRunStatus)]
)
def test_crd_schema_equals_the_model_field_for_field(field: str, model: Any) -> None:
    crd = norm_crd(_crd_root()["properties"][field])
    crd.pop("required", None) if field == "status" else None
    assert _diff(crd, _model_schema(model), field) == []


def test_the_comparison_sees_a_drift() -> None:
    """A description, a default or an enum that differs is reported, with its path."""
    crd = norm_crd(_crd_root()["properties"]["spec"])
    crd["properties"]["nodes"]["default"] = 2
    crd["properties"]["capacity"]["properties"]["type"]["enum"] = ["spot"]
    crd["properties"]["image"]["description"] = "changed"
    del crd["properties"]["suspend"]
    diff = _diff(crd, _model_schema(TrainingRunSpec), "spec")
    assert "spec.properties.nodes.default: CRD 2 != model 1" in diff
    assert any(d.startswith("spec.properties.capacity.properties.type.enum") for d in diff)
    assert any(d.startswith("spec.properties.image.description") for d in diff)
    assert "spec.properties.suspend: only in model" in diff


def test_progress_schema_is_the_crds() -> None:
    crd = norm_crd(_crd_root()["properties"]["status"]["properties"]["progress"])
    assert _diff(crd, _model_schema(Progress), "progress") == []


def test_api_imports_without_kopf_kubernetes_or_torch() -> None:
    code = (
        "import sys, spotrun_api, spotrun_api.spec, spotrun_api.status, spotrun_api.contract\n"
        "import spotrun_trainer\n"
        "bad = sorted(m for m in ('kopf', 'kubernetes', 'torch', 'spotrun_operator') "
        "if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
