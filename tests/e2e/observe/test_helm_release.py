"""`helm install`, `helm upgrade` and `helm uninstall` of charts/spotrun on the local cluster.

The operator's pod never runs here (kwok's fake nodes only carry GPU pods), so these tests
check what the apiserver holds: the objects, their wiring, the RBAC the apiserver enforces,
and what uninstall leaves behind (the CRD, by helm.sh/resource-policy: keep).
"""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from observe_helpers import CHART, Helm, service_account_user

from kube_helpers import poll

CRD_NAME = "trainingruns.spotrun.dev"


def _can(
    auth: client.AuthorizationV1Api,
    user: str,
    verb: str,
    resource: str,
    group: str = "",
    namespace: str = "",
    subresource: str = "",
) -> bool:
    review = auth.create_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user,
                "groups": ["system:serviceaccounts", "system:authenticated"],
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": verb,
                    "group": group,
                    "resource": resource,
                    "subresource": subresource,
                },
            },
        }
    )
    return bool(review.status.allowed)


def _exists(read: Any, *args: str) -> bool:
    try:
        read(*args)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_install_upgrade_uninstall(
    helm: Helm, api_client: client.ApiClient, core: client.CoreV1Api, namespace: str
) -> None:
    release = "spotrun"  # the name contains the chart's: objects are called "spotrun"
    apps = client.AppsV1Api(api_client)
    rbac = client.RbacAuthorizationV1Api(api_client)
    ext = client.ApiextensionsV1Api(api_client)
    auth = client.AuthorizationV1Api(api_client)
    fullname = f"{release}-{namespace}"  # cluster-scoped names must not clash between tests
    helm.install(release, namespace, f"--set=fullnameOverride={fullname}")
    try:
        st = helm.status(release, namespace)
        assert (st["info"]["status"], st["version"]) == ("deployed", 1)

        dep = apps.read_namespaced_deployment(fullname, namespace)
        assert dep.spec.strategy.type == "Recreate" and dep.spec.replicas == 1
        pod = dep.spec.template.spec
        assert pod.service_account_name == fullname
        (c,) = pod.containers
        assert c.image == "ghcr.io/spotrun/operator:0.1.0"
        assert "--all-namespaces" in c.args and "--metrics-port=8000" in c.args
        assert c.security_context.read_only_root_filesystem is True
        assert core.read_namespaced_service_account(fullname, namespace)
        svc = core.read_namespaced_service(f"{fullname}-metrics", namespace)
        assert [(p.name, p.port) for p in svc.spec.ports] == [("http-metrics", 8000)]
        assert svc.metadata.labels["spotrun.dev/metrics-job"] == "spotrun-operator"
        assert svc.spec.selector == dep.spec.selector.match_labels

        role = rbac.read_cluster_role(fullname)
        assert {r.resources[0] for r in role.rules} >= {"trainingruns", "pytorchjobs", "nodes"}
        binding = rbac.read_cluster_role_binding(fullname)
        assert binding.role_ref.name == fullname
        assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [
            ("ServiceAccount", fullname, namespace)
        ]
        # What the apiserver now lets the operator's identity do, in any namespace.
        sa = service_account_user(namespace, fullname)
        assert _can(auth, sa, "watch", "trainingruns", "spotrun.dev")
        assert _can(auth, sa, "patch", "trainingruns", "spotrun.dev", "ml", "status")
        assert _can(auth, sa, "create", "pytorchjobs", "kubeflow.org", "ml")
        assert _can(auth, sa, "delete", "pods", "", "ml")
        assert not _can(auth, sa, "update", "trainingruns", "spotrun.dev", "ml")
        assert not _can(auth, sa, "delete", "trainingruns", "spotrun.dev", "ml")
        assert not _can(auth, sa, "list", "secrets", "", "ml")
        assert not _can(auth, sa, "create", "pods", "", "ml")
        assert not _can(auth, sa, "list", "namespaces")  # clusterwide: kopf never does

        crd = ext.read_custom_resource_definition(CRD_NAME)
        assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"
        assert crd.metadata.annotations["meta.helm.sh/release-name"] == release
        assert crd.metadata.labels["app.kubernetes.io/managed-by"] == "Helm"

        # Upgrade: a changed value changes the Deployment; the release is at revision 2.
        generation = dep.metadata.generation
        helm(
            "upgrade",
            release,
            str(CHART),
            "-n",
            namespace,
            "--reuse-values",
            "--set=operator.extraArgs={--pricing=table}",
            "--set=resources.limits.memory=768Mi",
        )
        st = helm.status(release, namespace)
        assert (st["info"]["status"], st["version"]) == ("deployed", 2)
        dep = apps.read_namespaced_deployment(fullname, namespace)
        assert dep.metadata.generation > generation
        (c,) = dep.spec.template.spec.containers
        assert c.args[-1] == "--pricing=table" and c.resources.limits["memory"] == "768Mi"
        assert dep.spec.template.spec.service_account_name == fullname  # --reuse-values
    finally:
        helm.uninstall(release, namespace)

    # Everything but the CRD is gone.
    assert release not in helm.releases(namespace)
    gone = {
        "Deployment": (apps.read_namespaced_deployment, fullname, namespace),
        "ServiceAccount": (core.read_namespaced_service_account, fullname, namespace),
        "Service": (core.read_namespaced_service, f"{fullname}-metrics", namespace),
        "ClusterRole": (rbac.read_cluster_role, fullname),
        "ClusterRoleBinding": (rbac.read_cluster_role_binding, fullname),
    }
    poll(
        "uninstall to remove every object of the release",
        lambda: [k for k, (read, *args) in gone.items() if _exists(read, *args)] == [],
        timeout=60,
    )
    crd = ext.read_custom_resource_definition(CRD_NAME)
    assert crd.metadata.deletion_timestamp is None
    assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"
    assert not _can(auth, sa, "watch", "trainingruns", "spotrun.dev")  # the binding is gone
