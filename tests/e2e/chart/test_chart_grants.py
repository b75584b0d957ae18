"""The Helm chart's RBAC with the real helm binary: exactly the verbs the operator's code
uses, clusterwide or per namespace, each rule once with a comment."""

from __future__ import annotations

from typing import Any

import pytest
from chartkit import ALL_FEATURES_VALUES, CHART_DIR, find, one, render

pytestmark = pytest.mark.usefixtures("helm")

ALL = ("-f", str(ALL_FEATURES_VALUES))


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return [d["kind"] for d in docs]


# ------------------------------------------------------------------------------- RBAC
SPOTRUN = "spotrun.dev"
# What operator/spotrun_operator uses (kube.py, handlers.py, builders.py). A change here
# needs the same change in templates/_rbac.tpl, with a comment naming the code.
NAMESPACED_GRANTS = {
    (SPOTRUN, "trainingruns"): {"list", "watch"},
    (SPOTRUN, "trainingruns/status"): {"get", "patch"},
    (SPOTRUN, "trainingruns/finalizers"): {"update"},
    ("kubeflow.org", "pytorchjobs"): {"list", "watch", "create", "delete"},
    ("", "pods"): {"list", "watch", "delete"},
    ("", "persistentvolumeclaims"): {"list", "watch", "create"},
    ("", "configmaps"): {"get"},
    ("", "secrets"): {"get"},
    ("", "serviceaccounts"): {"create"},
    ("rbac.authorization.k8s.io", "roles"): {"create"},
    ("rbac.authorization.k8s.io", "rolebindings"): {"create"},
    ("", "events"): {"create", "list", "watch", "patch"},
    ("kueue.x-k8s.io", "workloads"): {"list", "watch"},
    ("apps", "deployments"): {"create", "patch", "delete"},
}
CLUSTER_GRANTS = {
    ("", "nodes"): {"list", "watch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}
# Namespaced mode only: kopf watches namespaces when it is not cluster-wide.
NAMESPACE_GRANTS = {("", "namespaces"): {"list", "watch"}}


# The leader election Lease (leaderElection.enabled, the default): a Role in the release
# namespace. create cannot be limited by name; get and update are limited to the Lease.
LEASE_GRANTS = {
    ("coordination.k8s.io", "leases", None): {"create"},
    ("coordination.k8s.io", "leases", "spotrun"): {"get", "update"},
}


def grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in (group, resource) and "*" not in rule["verbs"], rule
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_clusterwide_rbac_grants_exactly_the_operators_verbs() -> None:
    docs = render()
    role = one(docs, "ClusterRole")
    assert grants(role["rules"]) == NAMESPACED_GRANTS | CLUSTER_GRANTS
    binding = one(docs, "ClusterRoleBinding")
    sa = one(docs, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "spotrun-system"}
    ]
    assert [r["metadata"]["name"] for r in find(docs, "Role")] == ["spotrun-leader-election"]
    assert [b["metadata"]["name"] for b in find(docs, "RoleBinding")] == ["spotrun-leader-election"]


def lease_role(docs: list[dict[str, Any]]) -> dict[str, Any]:
    role: dict[str, Any] = one(docs, "Role", "spotrun-leader-election")
    return role


def named_grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str, str | None], set[str]]:
    out: dict[tuple[str, str, str | None], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for name in rule.get("resourceNames") or [None]:
                    out.setdefault((group, resource, name), set()).update(rule["verbs"])
    return out


@pytest.mark.parametrize("args", [(), ALL], ids=["clusterwide", "namespaced"])
def test_leader_election_grants_its_lease_only_in_the_release_namespace(
    args: tuple[str, ...],
) -> None:
    docs = render(*args)
    role = lease_role(docs)
    assert role["metadata"]["namespace"] == "spotrun-system"
    assert named_grants(role["rules"]) == LEASE_GRANTS
    binding = one(docs, "RoleBinding", "spotrun-leader-election")
    assert binding["metadata"]["namespace"] == "spotrun-system"
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == one(docs, "ServiceAccount")["metadata"]["name"]
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "--leader-election-id=spotrun" in container["args"]
    assert "--leader-election-namespace=spotrun-system" in container["args"]
    off = render(*args, "--set=leaderElection.enabled=false")
    assert not find(off, "Role", "spotrun-leader-election")
    assert not find(off, "RoleBinding", "spotrun-leader-election")


def test_pod_dry_run_grants_create_on_pods_and_passes_the_flag() -> None:
    """Off by default (RBAC cannot limit create to dry runs); rbac.podDryRun grants it and
    turns the operator's --pod-dry-run on, together."""
    default = render()
    assert (
        "--pod-dry-run"
        not in one(default, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    docs = render("--set=rbac.podDryRun=true")
    pods = grants(one(docs, "ClusterRole")["rules"])[("", "pods")]
    assert pods == NAMESPACED_GRANTS[("", "pods")] | {"create"}
    args = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--pod-dry-run" in args


def test_namespaced_rbac_uses_a_role_per_namespace() -> None:
    docs = render(*ALL)
    cluster_role = one(docs, "ClusterRole")
    assert grants(cluster_role["rules"]) == CLUSTER_GRANTS | NAMESPACE_GRANTS
    assert one(docs, "ClusterRoleBinding")["roleRef"]["name"] == cluster_role["metadata"]["name"]
    roles = [r for r in find(docs, "Role") if r != lease_role(docs)]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml-team", "research"]
    for role in roles:
        assert grants(role["rules"]) == NAMESPACED_GRANTS
    bindings = [
        b for b in find(docs, "RoleBinding") if b["metadata"]["namespace"] != "spotrun-system"
    ]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml-team", "research"]
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": roles[0]["metadata"]["name"],
        }
        assert binding["subjects"][0]["namespace"] == "spotrun-system"


def test_rbac_rules_are_listed_once_with_a_comment_each() -> None:
    template = (CHART_DIR / "templates" / "_rbac.tpl").read_text()
    lines = template.splitlines()
    rule_lines = [i for i, line in enumerate(lines) if line.startswith("- apiGroups:")]
    # configmaps+secrets and roles+rolebindings share a rule each; poddisruptionbudgets has
    # one, rendered only with operator.spotNotice trainThrough.
    assert (
        len(rule_lines)
        == (
            len(NAMESPACED_GRANTS)
            - 2
            + len(CLUSTER_GRANTS)
            + len(NAMESPACE_GRANTS)
            + len(LEASE_GRANTS)
        )
        + 1
    )
    for i in rule_lines:
        assert lines[i - 1].startswith("# "), f"rule at _rbac.tpl:{i + 1} has no comment"
    for path in (CHART_DIR / "templates").glob("*.yaml"):
        assert "verbs:" not in path.read_text(), f"{path.name} lists verbs outside _rbac.tpl"


def test_rbac_can_be_left_to_an_administrator() -> None:
    docs = render("--set=rbac.create=false", "--set=serviceAccount.create=false",
                  "--set=serviceAccount.name=ops-provided")  # fmt: skip
    assert not {"ClusterRole", "ClusterRoleBinding", "ServiceAccount"} & set(kinds(docs))
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ops-provided"


def test_training_through_notices_grants_create_on_budgets_and_passes_the_flags() -> None:
    """operator.spotNotice trainThrough: the run's PodDisruptionBudget needs create on
    poddisruptionbudgets, granted only then, with the flag and the stop margin."""
    assert ("policy", "poddisruptionbudgets") not in grants(one(render(), "ClusterRole")["rules"])
    docs = render("--set=operator.spotNotice=trainThrough",
                  "--set=operator.noticeStopMarginSeconds=30")  # fmt: skip
    got = grants(one(docs, "ClusterRole")["rules"])
    assert got == NAMESPACED_GRANTS | CLUSTER_GRANTS | {
        ("policy", "poddisruptionbudgets"): {"create"}
    }
    args = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--train-through-notice" in args and "--notice-stop-margin-seconds=30" in args
