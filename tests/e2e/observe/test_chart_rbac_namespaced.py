"""The chart's namespaced mode (a Role per watched namespace plus a small ClusterRole)
grants what ``spotrun-operator --namespace`` needs: run as the chart's ServiceAccount, the
happy path and a preemption pass, the apiserver denies nothing, and the namespace
list/watch only this mode grants is used (kopf follows namespaces when not clusterwide)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import test_controller_preemption as preemption
from kubernetes import client
from observe_helpers import (
    AuditLog,
    Helm,
    format_grants,
    granted,
    service_account_kubeconfig,
    service_account_user,
    usage,
)
from scenarios import happy_path

from controller_process import Operator
from spotrun_dev.cluster import LocalCluster


def test_namespaced_mode_grants_enough(
    cluster: LocalCluster,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    api_client: client.ApiClient,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    crd: dict[str, Any],
    helm: Helm,
    audit: AuditLog,
    operator_log: list[Any],
    tmp_path: Path,
) -> None:
    release = "spotrun-ns"
    fullname = f"spotrun-{namespace}"
    # The release lives in the watched namespace; the CRD is left to the `crd` fixture.
    helm.install(
        release,
        namespace,
        f"--set=fullnameOverride={fullname}",
        "--set=watch.mode=namespaced",
        f"--set=watch.namespaces={{{namespace}}}",
        "--set=crds.install=false",
    )
    try:
        manifest = helm.manifest(release, namespace)
        assert {d["kind"] for d in manifest} >= {"Role", "RoleBinding", "ClusterRole"}
        kubeconfig = service_account_kubeconfig(
            core, cluster.kubeconfig, namespace, fullname, tmp_path / "kubeconfig"
        )
        offset = audit.offset()
        op = Operator(kubeconfig, namespace, tmp_path / "operator.log", ())
        operator_log.append(op.start())
        happy_path(core, custom, namespace)
        preemption.test_interruption_is_one_preemption_then_resume(
            "nth", core, custom, namespace, fleet, checkpoint_pvc, op
        )
        assert op.alive()
        op.stop()
        use = usage(audit.events(offset, service_account_user(namespace, fullname)))
        print(f"\nrequests:\n{format_grants(use.used, use.used)}")
        assert not use.forbidden, "denied requests:\n" + "\n".join(sorted(set(use.forbidden)))
        extra = set(use.used) - granted(manifest)
        assert not extra, f"used without a grant of the chart:\n{format_grants(extra)}"
        assert {("", "namespaces", "list"), ("", "namespaces", "watch")} <= set(use.used)
    finally:
        helm.uninstall(release, namespace)
