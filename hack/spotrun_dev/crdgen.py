"""The TrainingRun CRD, generated from the pydantic models in ``spotrun_api``.

    python -m spotrun_dev.crdgen           write crds/trainingruns.spotrun.dev.yaml
    python -m spotrun_dev.crdgen --check   change nothing; exit 1 and show the difference

The openAPIV3Schema is the models' JSON schema (:class:`spotrun_api.resource.TrainingRun`)
made structural: every ``$ref`` inlined (a CRD forbids them), an optional field's
``anyOf [X, null]`` collapsed into X (unset, never null), ``int | str`` made
``x-kubernetes-int-or-string``, an open object (``extra="allow"``, ``dict[str, Any]``) made
``x-kubernetes-preserve-unknown-fields``. Descriptions, defaults, enums, bounds, formats
and CEL rules come from the models as they are. The rest of the CRD (names, the version,
subresources, printer columns) is below, the one place it is written.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from spotrun_api.resource import GROUP, KIND, PLURAL, VERSION, TrainingRun
from spotrun_dev import paths

CRD_PATH = paths.REPO_ROOT / "crds" / f"{PLURAL}.{GROUP}.yaml"
HEADER = (
    "# The TrainingRun CRD, GENERATED from the pydantic models in api/spotrun_api by\n"
    "# `make crds` (python -m spotrun_dev.crdgen); do not edit: change the models and rerun\n"
    '# it (docs/operator.md, "Changing the API"). The operator, the Helm chart (a copy made\n'
    "# by hack/sync-chart-crds.sh) and the tests all read this file.\n"
)


def _column(
    name: str, type_: str, path: str, description: str = "", priority: int = 0
) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "type": type_}
    if priority:
        out["priority"] = priority
    out["jsonPath"] = path
    if description:
        out["description"] = description
    return out


# `kubectl get tr` (priority 1: `-o wide` only).
PRINTER_COLUMNS = (
    _column("Phase", "string", ".status.phase", "Lifecycle phase of the run."),
    _column(
        "Attempt",
        "integer",
        ".status.attempt",
        "Number of the current attempt (PyTorchJob <run>-a<N>).",
    ),
    _column(
        "Preemptions",
        "integer",
        ".status.preemptions",
        "Attempts lost to infrastructure (spot reclaims, node loss).",
    ),
    _column("Failures", "integer", ".status.failures", "Attempts lost to application failures."),
    _column(
        "Step",
        "integer",
        ".status.progress.step",
        "Optimizer steps done, as reported by the trainer.",
    ),
    _column(
        "Checkpoint",
        "integer",
        ".status.progress.checkpointStep",
        "Step of the newest committed checkpoint.",
    ),
    _column(
        "Cost",
        "string",
        ".status.display.cost",
        "Estimated spend on GPU nodes so far, in dollars ($12.40).",
    ),
    _column(
        "Last",
        "string",
        ".status.display.last",
        "The last interruption: the signal of a preemption or the outcome and reason of "
        "another loss, with its attempt (spot-interruption a3).",
    ),
    _column(
        "Last-Age",
        "date",
        ".status.display.lastAt",
        "How long ago the last interruption ended its attempt.",
    ),
    _column("Age", "date", ".metadata.creationTimestamp"),
    _column(
        "Savings",
        "string",
        ".status.display.savings",
        "Saving against running every node-hour on-demand.",
        priority=1,
    ),
    _column(
        "Lost-Work",
        "string",
        ".status.display.lostWork",
        "Training time lost to interruptions (not covered by a checkpoint).",
        priority=1,
    ),
    _column(
        "GPU-Hours",
        "string",
        ".status.display.gpuHours",
        "GPU-hours used by all attempts.",
        priority=1,
    ),
    _column("Message", "string", ".status.message", "Summary of the latest decision.", priority=1),
)

# The order keys are written in (unknown keys are an error, so nothing slips through).
KEY_ORDER = (
    "type",
    "format",
    "enum",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "multipleOf",
    "minProperties",
    "maxProperties",
    "pattern",
    "default",
    "nullable",
    "description",
    "required",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
    "anyOf",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
    "properties",
    "items",
    "additionalProperties",
)
DROPPED = ("title", "$defs")
RULE_KEY_ORDER = ("rule", "message", "messageExpression", "fieldPath", "reason", "optionalOldSelf")


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """``node`` with its ``$ref`` inlined and an optional field's ``anyOf [X, null]``
    collapsed into X; the referring node's keys (description, default) win."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**_resolve(target, defs), **node}
    if any(v.get("type") == "null" for v in node.get("anyOf", [])):
        variants = [v for v in node.pop("anyOf") if v.get("type") != "null"]
        if node.get("default", ...) is None:
            del node["default"]  # unset, not a default
        if len(variants) == 1:
            node = {**_resolve(variants[0], defs), **node}
        else:
            node["anyOf"] = variants
    return node


def _int_or_string(node: dict[str, Any]) -> dict[str, Any]:
    """``int | str`` (a Kubernetes quantity) as ``x-kubernetes-int-or-string``; the
    string's pattern moves up beside it."""
    variants = node.pop("anyOf")
    if sorted(v.get("type", "") for v in variants) != ["integer", "string"]:
        raise ValueError(f"a CRD cannot say this union: {variants}")
    node["x-kubernetes-int-or-string"] = True
    node["anyOf"] = [{"type": v["type"]} for v in variants]
    for variant in variants:
        extra = {k: v for k, v in variant.items() if k not in ("type", "title")}
        node.update(extra)
    return node


def structural(raw: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema node as a structural CRD schema node."""
    node = {k: v for k, v in _resolve(raw, defs).items() if k not in DROPPED}
    if "anyOf" in node:
        node = _int_or_string(node)
    if isinstance(node.get("exclusiveMinimum"), int | float):
        node["minimum"], node["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if isinstance(node.get("exclusiveMaximum"), int | float):
        node["maximum"], node["exclusiveMaximum"] = node["exclusiveMaximum"], True
    if node.get("additionalProperties") is True:
        del node["additionalProperties"]
        node["x-kubernetes-preserve-unknown-fields"] = True
    elif isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = structural(node["additionalProperties"], defs)
    if "description" in node:
        node["description"] = " ".join(node["description"].split())  # docstrings wrap
    if "properties" in node:
        props = {k: structural(v, defs) for k, v in node.pop("properties").items()}
        if props:
            node["properties"] = props
    if "items" in node:
        node["items"] = structural(node["items"], defs)
    rules = node.get("x-kubernetes-validations", [])
    node["x-kubernetes-validations"] = [{k: r[k] for k in RULE_KEY_ORDER if k in r} for r in rules]
    if not rules:
        del node["x-kubernetes-validations"]
    unknown = set(node) - set(KEY_ORDER) | {k for r in rules for k in r} - set(RULE_KEY_ORDER)
    if unknown:
        raise ValueError(f"no CRD form for {sorted(unknown)} in {raw}")
    return {k: node[k] for k in KEY_ORDER if k in node}


def open_api_schema() -> dict[str, Any]:
    """The openAPIV3Schema of the TrainingRun CRD, from the models."""
    schema = TrainingRun.model_json_schema(by_alias=True)
    return structural(schema, schema.get("$defs", {}))


def crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "spotrun", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["tr"],
                "categories": ["spotrun"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": list(PRINTER_COLUMNS),
                    "schema": {"openAPIV3Schema": open_api_schema()},
                }
            ],
        },
    }


class _Dumper(yaml.SafeDumper):
    """Block lists indented under their key; a long text (a description, a CEL rule or
    message) folded (``>-``) at the file's width."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = ">" if len(value) > 60 and " " in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render() -> str:
    """The CRD file's text: the header, then the YAML (keys in the order built above)."""
    obj = crd()
    body = yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=92, allow_unicode=True)
    if yaml.safe_load(body) != obj:  # the folding must not change a single character
        raise AssertionError("the CRD does not read back as generated")
    return HEADER + body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spotrun_dev.crdgen", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if crds/ is out of date")
    args = parser.parse_args(argv)
    text = render()
    current = CRD_PATH.read_text() if CRD_PATH.exists() else ""
    rel = CRD_PATH.relative_to(paths.REPO_ROOT)
    if not args.check:
        if current != text:
            CRD_PATH.write_text(text)
            print(f"wrote {rel}")
        return 0
    if current == text:
        return 0
    diff = difflib.unified_diff(
        current.splitlines(keepends=True), text.splitlines(keepends=True), f"{rel}", "generated"
    )
    sys.stderr.writelines(list(diff)[:200])
    print(f"{rel} is not what the models generate: run make crds", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
