"""The chart's RBAC, proven both ways on a real apiserver with RBAC on.

Enough: charts/spotrun is installed (clusterwide mode) and ``spotrun-operator`` runs,
watching every namespace as the Deployment would, with a token of the chart's
ServiceAccount, so the apiserver authorizes each call against the chart's ClusterRole.
The operator's own e2e scenarios then run against it and must pass.

No more: the apiserver's audit log records every request of that identity. After the
scenarios, every (apiGroup, resource, verb) the chart grants must appear in it, except the
few in UNUSED_BY_DESIGN, which no request ever exercises (each says why).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import test_controller_failures as failures
import test_controller_lifecycle as lifecycle
import test_controller_preemption as preemption
import test_kueue_admission as admission
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from observe_helpers import (
    AuditLog,
    Grant,
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

# Granted, and needed, but never visible as a request of the operator in the audit log.
UNUSED_BY_DESIGN: dict[Grant, str] = {
    # RBAC escalation prevention: kube.create makes each run's trainer Role, which grants
    # get+patch on trainingruns/status; the apiserver allows that only to a subject that
    # holds both itself (the chart grants no `escalate`). Checked, never requested.
    ("spotrun.dev", "trainingruns/status", "get"): "held so the trainer Role may grant it",
    # The OwnerReferencesPermissionEnforcement admission plugin (off here; on in OpenShift
    # and hardened clusters) checks it when children carry blockOwnerDeletion owner refs.
    ("spotrun.dev", "trainingruns/finalizers", "update"): "checked by an admission plugin",
    # The warm spares' Deployment (spec.capacity.warmSpares): a server-side apply (create
    # or patch) while a run is active, a delete when it ends or is suspended. The scenarios
    # here run no spares; the chart's operator pod applies one on the real nodes
    # (tests/e2e/realnodes/test_real_recovery.py); the unit tests cover the delete.
    ("apps", "deployments", "create"): "used by runs with warm spares only",
    ("apps", "deployments", "patch"): "used by runs with warm spares only",
    ("apps", "deployments", "delete"): "used by runs with warm spares only",
}
# Granted, and used only when something repeats that the scenarios need not repeat: the
# event recorder patches an Event's count when an identical event is posted again in one
# operator process (recorder.py; tests/unit/spotrun_operator/test_controller_recorder.py).
USED_ON_REPEATS: dict[Grant, str] = {
    ("", "events", "patch"): "a repeated identical event bumps the existing Event's count",
}
SCENARIOS = {"happy", "nth", "failure", "suspend", "config-error", "delete-cascade", "kueue"}
_passed: set[str] = set()


class ClusterwideOperator(Operator):  # type: ignore[misc]
    """The operator as the chart's Deployment runs it in clusterwide mode."""

    def command(self) -> list[str]:
        cmd: list[str] = super().command()
        i = cmd.index("--namespace")
        return [*cmd[:i], *cmd[i + 2 :], "--all-namespaces"]


@dataclass
class ChartIdentity:
    release: str
    namespace: str
    user: str
    operator: Any
    audit_from: int
    manifest: list[dict[str, Any]]


@pytest.fixture(scope="module")
def chart_operator(
    cluster: LocalCluster,
    core: client.CoreV1Api,
    helm: Helm,
    audit: AuditLog,
    crd: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ChartIdentity]:
    ns = f"spotrun-rbac-{uuid.uuid4().hex[:5]}"
    core.create_namespace({"metadata": {"name": ns, "labels": {"spotrun.dev/e2e": "true"}}})
    release, fullname = "spotrun", f"spotrun-{ns}"
    tmp = tmp_path_factory.mktemp("chart-rbac")
    op = None
    try:
        helm.install(release, ns, f"--set=fullnameOverride={fullname}")
        kubeconfig = service_account_kubeconfig(
            core, cluster.kubeconfig, ns, fullname, tmp / "kubeconfig"
        )
        offset = audit.offset()
        # As the Deployment runs it: leader election on the release's Lease (the default).
        election = ("--leader-elect", f"--leader-election-id={fullname}",
                    f"--leader-election-namespace={ns}")  # fmt: skip
        op = ClusterwideOperator(kubeconfig, ns, tmp / "operator.log", election).start()
        yield ChartIdentity(
            release=release,
            namespace=ns,
            user=service_account_user(ns, fullname),
            operator=op,
            audit_from=offset,
            manifest=helm.manifest(release, ns),
        )
    finally:
        if op is not None:
            op.stop()
            if _passed != SCENARIOS:
                sys.stderr.write(f"\n--- operator log ({op.log_path}) ---\n{op.log(120)}\n")
        try:
            helm.uninstall(release, ns)
        finally:
            try:
                core.delete_namespace(ns)
            except ApiException as exc:
                if exc.status != 404:
                    raise


def _alive(chart_operator: ChartIdentity) -> Any:
    op = chart_operator.operator
    assert op.alive(), f"the operator died:\n{op.log()}"
    return op


def test_happy_path(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    chart_operator: ChartIdentity,
) -> None:
    _alive(chart_operator)
    happy_path(core, custom, namespace)
    _passed.add("happy")


def test_nth_preemption(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    chart_operator: ChartIdentity,
) -> None:
    op = _alive(chart_operator)
    preemption.test_interruption_is_one_preemption_then_resume(
        "nth", core, custom, namespace, fleet, checkpoint_pvc, op
    )
    _passed.add("nth")


def test_application_failure(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    chart_operator: ChartIdentity,
) -> None:
    op = _alive(chart_operator)
    failures.test_exit1_is_retried_then_fails_the_run_when_max_failures_is_spent(
        core, custom, namespace, fleet, checkpoint_pvc, op
    )
    _passed.add("failure")


def test_suspend_and_resume(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    chart_operator: ChartIdentity,
) -> None:
    op = _alive(chart_operator)
    lifecycle.test_suspend_then_resume(core, custom, namespace, fleet, checkpoint_pvc, op)
    _passed.add("suspend")


def test_configuration_errors(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    chart_operator: ChartIdentity,
) -> None:
    op = _alive(chart_operator)
    failures.test_missing_secret_fails_the_run_before_any_pod(
        core, custom, namespace, fleet, checkpoint_pvc, op
    )
    failures.test_image_pull_error_fails_the_run_with_the_message(
        core, custom, namespace, fleet, checkpoint_pvc, op
    )
    _passed.add("config-error")


def test_delete_cascades_to_every_child(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    api_client: client.ApiClient,
    namespace: str,
    fleet: None,
    chart_operator: ChartIdentity,
) -> None:
    op = _alive(chart_operator)
    lifecycle.test_deleting_the_run_removes_every_child(
        core, custom, api_client, namespace, fleet, op
    )
    _passed.add("delete-cascade")


def test_kueue_admission(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    kueue_queue: str,
    chart_operator: ChartIdentity,
) -> None:
    """spec.queueName: the operator reads Kueue's Workloads (the grant's one use)."""
    op = _alive(chart_operator)
    admission.test_a_run_waits_in_the_queue_until_quota_frees(
        core, custom, namespace, fleet, checkpoint_pvc, kueue_queue, op
    )
    _passed.add("kueue")


def test_every_granted_verb_is_used(chart_operator: ChartIdentity, audit: AuditLog) -> None:
    """Runs last in this module: reads what the scenarios above made the operator do."""
    missing = SCENARIOS - _passed
    assert not missing, f"scenarios that did not pass in this session: {sorted(missing)}"
    _alive(chart_operator)
    grants = granted(chart_operator.manifest)
    assert grants, "the release has no ClusterRole"
    use = usage(audit.events(chart_operator.audit_from, chart_operator.user))
    assert use.used, f"no request of {chart_operator.user} in {audit.path}"
    print(f"\nrequests of {chart_operator.user}:\n{format_grants(use.used, use.used)}")
    print(f"non-resource requests: {sorted(use.non_resource)}")
    print("authorized, then refused:\n" + "\n".join(sorted(set(use.rejected))))

    assert not use.forbidden, "denied requests:\n" + "\n".join(sorted(set(use.forbidden)))
    extra = set(use.used) - grants
    assert not extra, f"used without a grant of the chart:\n{format_grants(extra)}"
    unused = grants - set(use.used)
    unexplained = unused - set(UNUSED_BY_DESIGN) - set(USED_ON_REPEATS)
    assert not unexplained, (
        "granted by charts/spotrun but never used by the operator (drop them from "
        f"templates/_rbac.tpl, or explain them in UNUSED_BY_DESIGN):\n{format_grants(unexplained)}"
    )
    stale = set(UNUSED_BY_DESIGN) - unused
    assert not stale, f"UNUSED_BY_DESIGN entries that were used after all:\n{format_grants(stale)}"
    assert set(UNUSED_BY_DESIGN) <= grants
