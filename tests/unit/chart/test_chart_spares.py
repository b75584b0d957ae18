"""The chart's warm spares (helm template only): the spotrun-spare PriorityClass, the
pools' placeholder Deployments, and the operator's grant on Deployments."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "spotrun"


def _helm() -> str | None:
    for candidate in (os.environ.get("HELM"), str(ROOT / ".cache" / "bin" / "helm")):
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("helm")


HELM = _helm()
pytestmark = pytest.mark.skipif(HELM is None, reason="helm not found (make binaries, or HELM=)")


def render(*sets: str) -> list[dict[str, Any]]:
    assert HELM is not None
    cmd = [HELM, "template", "rel", str(CHART), "-n", "spotrun-system"]
    for s in sets:
        cmd += ["--set", s]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_the_spare_priority_class_is_below_default_and_never_preempts() -> None:
    (pc,) = of_kind(render(), "PriorityClass")
    assert pc["metadata"]["name"] == "spotrun-spare"
    assert (pc["value"], pc["preemptionPolicy"], pc["globalDefault"]) == (-10, "Never", False)
    assert pc["description"]
    assert of_kind(render("spares.priorityClass=false"), "PriorityClass") == []


def test_no_pool_spares_by_default_and_one_deployment_per_pool() -> None:
    assert not [d for d in of_kind(render(), "Deployment") if "spare" in d["metadata"]["name"]]
    docs = render(
        "spares.pools[0].name=p4d",
        "spares.pools[0].replicas=2",
        "spares.pools[0].image=trainer:1",
        "spares.pools[0].gpus=8",
        "spares.pools[0].nodeSelector.pool=p4d",
    )
    (dep,) = [
        d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "rel-spotrun-spare-p4d"
    ]
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "spotrun-spare"
    assert pod["nodeSelector"] == {"pool": "p4d"}
    (anti,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    assert anti["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    (c,) = pod["containers"]
    assert c["image"] == "trainer:1" and c["resources"]["limits"]["nvidia.com/gpu"] == 8


def test_a_pool_without_an_image_is_refused_by_the_schema() -> None:
    assert HELM is not None
    cmd = [
        HELM,
        "template",
        "rel",
        str(CHART),
        "--set",
        "spares.pools[0].name=p",
        "--set",
        "spares.pools[0].replicas=1",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode != 0 and "image" in out.stderr


def test_the_operator_may_apply_and_delete_deployments_only() -> None:
    docs = render()
    verbs = {
        v
        for role in [*of_kind(docs, "ClusterRole"), *of_kind(docs, "Role")]
        for rule in role.get("rules") or []
        if "apps" in rule["apiGroups"] and "deployments" in rule["resources"]
        for v in rule["verbs"]
    }
    assert verbs == {"create", "patch", "delete"}
