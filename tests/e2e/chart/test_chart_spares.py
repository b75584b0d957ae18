"""The chart's warm spares: the spotrun-spare PriorityClass, pool spares, the schema, and
the operator's deployments grants (rendered with helm template, chartkit)."""

from __future__ import annotations

from typing import Any

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


def operator_args(docs: list[dict[str, Any]]) -> list[str]:
    (dep,) = [d for d in find(docs, "Deployment") if "spare" not in d["metadata"]["name"]]
    args: list[str] = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def test_spares_pull_the_images_named_and_none_by_default() -> None:
    """None by default (spotrun's init-container template adds no init container); what
    pullImages names (e.g. upstream's --pytorch-init-container-image) a pool spare pulls too."""
    assert not [a for a in operator_args(render()) if a.startswith("--spare-pull-images")]
    docs = render(
        "--set=spares.pullImages={a.example/init:1,b.example/dns:2}",
        "--set=spares.pools[0].name=p4d",
        "--set=spares.pools[0].replicas=1",
        "--set=spares.pools[0].image=trainer:1",
    )
    assert "--spare-pull-images=a.example/init:1,b.example/dns:2" in operator_args(docs)
    (pool,) = [d for d in find(docs, "Deployment") if d["metadata"]["name"].endswith("spare-p4d")]
    inits = pool["spec"]["template"]["spec"]["initContainers"]
    assert [(c["name"], c["image"]) for c in inits] == [
        ("pull-0", "a.example/init:1"), ("pull-1", "b.example/dns:2")]  # fmt: skip
    assert all(c["command"] == ["sh", "-c", "exit 0"] for c in inits)
    assert all(c["securityContext"]["runAsNonRoot"] for c in inits)


def test_a_pull_image_with_a_comma_is_refused_by_the_schema() -> None:
    out = helm_template("--set=spares.pullImages[0]=a:1\\,b:2")
    assert out.returncode != 0 and "pullImages" in out.stderr


def test_a_rebalance_recommendation_is_ignored_by_default_and_replace_or_restart_pass_a_flag() -> (
    None
):
    flags = ("--replace-on-rebalance", "--restart-on-rebalance")
    assert not [a for a in operator_args(render()) if a in flags]
    for value, flag in zip(("replace", "restart"), flags, strict=True):
        args = operator_args(render(f"--set=operator.rebalanceRecommendation={value}"))
        assert [a for a in args if a in flags] == [flag], value
    out = helm_template("--set=operator.rebalanceRecommendation=drain")
    assert out.returncode != 0 and "rebalanceRecommendation" in out.stderr


def test_a_spot_notice_stops_the_gang_by_default_and_train_through_passes_the_flag() -> None:
    assert "--train-through-notice" not in operator_args(render())
    args = operator_args(render("--set=operator.spotNotice=trainThrough"))
    assert "--train-through-notice" in args and "--notice-stop-margin-seconds=40" in args
    out = helm_template("--set=operator.spotNotice=ride")
    assert out.returncode != 0 and "spotNotice" in out.stderr
