"""The chart's warm spares: the spotrun-spare PriorityClass, pool spares, the schema, and
the operator's deployments grants (rendered with helm template, chartkit)."""

from __future__ import annotations

from chartkit import find, helm_template, render


def test_the_spare_priority_class_is_below_default_and_never_preempts() -> None:
    (pc,) = find(render(), "PriorityClass")
    assert pc["metadata"]["name"] == "spotrun-spare"
    assert (pc["value"], pc["preemptionPolicy"], pc["globalDefault"]) == (-10, "Never", False)
    assert pc["description"]
    assert find(render("--set=spares.priorityClass=false"), "PriorityClass") == []


def test_no_pool_spares_by_default_and_one_deployment_per_pool() -> None:
    assert not [d for d in find(render(), "Deployment") if "spare" in d["metadata"]["name"]]
    docs = render(
        "--set=spares.pools[0].name=p4d",
        "--set=spares.pools[0].replicas=2",
        "--set=spares.pools[0].image=trainer:1",
        "--set=spares.pools[0].gpus=8",
        "--set=spares.pools[0].nodeSelector.pool=p4d",
    )
    (dep,) = [d for d in find(docs, "Deployment") if d["metadata"]["name"].endswith("spare-p4d")]
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
    out = helm_template("--set=spares.pools[0].name=p", "--set=spares.pools[0].replicas=1")
    assert out.returncode != 0 and "image" in out.stderr


def test_the_operator_may_apply_and_delete_deployments_only() -> None:
    docs = render()
    verbs = {
        v
        for role in [*find(docs, "ClusterRole"), *find(docs, "Role")]
        for rule in role.get("rules") or []
        if "apps" in rule["apiGroups"] and "deployments" in rule["resources"]
        for v in rule["verbs"]
    }
    assert verbs == {"create", "patch", "delete"}
