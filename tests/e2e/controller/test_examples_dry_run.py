"""Every example TrainingRun in manifests/examples/ is accepted by the apiserver's
validation of the CRD (schema + CEL), through a server-side dry run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from spotrun_api.contract import GROUP, PLURAL, VERSION

EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "manifests" / "examples").glob("*.yaml"))


def _runs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "TrainingRun"]


def test_every_workload_has_an_example() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {
        "quickstart",
        "resnet50",
        "mpnet-ablations",
        "gpt-pretrain",
        "two-tower",
    } <= names
    assert len(_runs(EXAMPLES[[p.stem for p in EXAMPLES].index("mpnet-ablations")])) == 3


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_passes_server_side_dry_run(
    path: Path, crd: dict[str, Any], custom: client.CustomObjectsApi, namespace: str
) -> None:
    runs = _runs(path)
    assert runs, f"{path.name} holds no TrainingRun"
    for run in runs:
        run["metadata"]["namespace"] = namespace
        created = custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, run, dry_run="All"
        )
        # Defaults from the schema were applied by the apiserver, and nothing was dropped.
        assert created["spec"]["nodes"] == run["spec"].get("nodes", created["spec"]["nodes"])
        for key in run["spec"]:
            assert key in created["spec"], f"{path.name}: spec.{key} was pruned by the schema"
        assert (
            custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"] == []
        )
