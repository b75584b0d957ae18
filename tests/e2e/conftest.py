"""Fixtures for tests against a real Kubernetes control plane.

The session brings up the local cluster (kube-apiserver, controller-manager, scheduler,
etcd, kwok and the Kubeflow training operator, all built from Go modules) unless
E2E_KUBECONFIG names another cluster. A cluster that cannot start fails the run: these
tests are never skipped.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from observe_helpers import AuditLog

from controller_process import CRD, Operator
from kube_helpers import poll
from spotrun_dev import kueue, storage
from spotrun_dev.cluster import ClusterError, LocalCluster, ensure_cluster, ensure_fleet
from spotrun_dev.fleet import KWOK_ANNOTATION
from spotrun_operator.kubeio.kube import Kube

_E2E = Path(__file__).resolve().parent
_TOOLS_ONLY = _E2E / "chart"  # helm and promtool, no cluster


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``e2e`` on every test here that needs the cluster, ``tools`` on the chart's: so
    ``pytest tests/unit`` needs only the venv, and ``-m "not e2e"`` skips the cluster."""
    for item in items:
        path = Path(str(item.path))
        if _TOOLS_ONLY in path.parents:
            item.add_marker(pytest.mark.tools)
        elif _E2E in path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def cluster() -> LocalCluster:
    external = os.environ.get("E2E_KUBECONFIG")
    if external:
        return LocalCluster("external", Path(external))
    try:
        return ensure_cluster()
    except ClusterError as exc:
        pytest.fail(f"the local cluster failed to start: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def api_client(cluster: LocalCluster) -> Iterator[client.ApiClient]:
    api = cluster.api_client()
    yield api
    api.close()


@pytest.fixture(scope="session")
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def custom(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


@pytest.fixture
def namespace(core: client.CoreV1Api, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards with everything in it."""
    base = request.node.name.lower().replace("_", "-")
    name = "".join(ch for ch in base if ch.isalnum() or ch == "-")[:40].strip("-")
    name = f"{name}-{uuid.uuid4().hex[:5]}"
    core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(name=name, labels={"spotrun.dev/e2e": "true"})
        )
    )
    yield name
    try:
        core.delete_namespace(name, propagation_policy="Foreground")
    except ApiException as exc:
        if exc.status != 404:
            raise
    _drop_kwok_pods(core, name)
    # The namespace's hostPath volumes (storage.ensure_checkpoint_claim): a checkpoint
    # folder per test piled up to GBs under /tmp.
    shutil.rmtree(storage.LOCAL_ROOT / name, ignore_errors=True)


def _drop_kwok_pods(core: client.CoreV1Api, namespace: str) -> None:
    """Delete the leaving namespace's pods on kwok nodes at once.

    kwok runs no container, so such a pod has nothing to stop in a grace period; left to the
    namespace controller, each stayed bound for about 5 s, which the next test's ``fleet``
    waited out (``fleet_state.leftover_pods``). This runs after the namespace's deletion
    began: the training operator can no longer create a pod in it to replace one deleted.
    Pods on real nodes keep their graceful deletion (their containers do run).
    """
    kwok = {
        n.metadata.name
        for n in core.list_node().items
        if KWOK_ANNOTATION in (n.metadata.annotations or {})
    }
    for pod in core.list_namespaced_pod(namespace).items:
        if pod.spec.node_name not in kwok:
            continue
        try:
            core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                raise


@pytest.fixture
def fleet(core: client.CoreV1Api) -> None:
    """The fake spot fleet as freshly registered: earlier tests may have reclaimed nodes."""
    ensure_fleet(core)


@pytest.fixture(scope="session")
def crd(cluster: LocalCluster, api_client: client.ApiClient) -> dict[str, Any]:
    """The TrainingRun CRD, server-side applied from the single source and Established."""
    body = yaml.safe_load(CRD.read_text())
    name = body["metadata"]["name"]
    kube = Kube(api_client)
    kube.request(
        "PATCH",
        f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}",
        query={"fieldManager": "spotrun-e2e", "force": "true"},
        body=body,
        content_type="application/apply-patch+yaml",
    )

    def established() -> bool:
        obj = kube.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        conds = {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or []}
        return conds.get("Established") == "True"

    poll("the TrainingRun CRD to be Established", established, timeout=60)
    return dict(body)


@pytest.fixture
def operator_factory(
    cluster: LocalCluster,
    crd: dict[str, Any],
    namespace: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Any]:
    made: list[Operator] = []

    def make(*extra: str) -> Operator:
        op = Operator(cluster.kubeconfig, namespace, tmp_path / f"operator-{len(made)}.log", extra)
        made.append(op)
        return op

    yield make
    failed = getattr(request.node, "rep_call", None)
    for op in made:
        op.stop()
        if failed is not None and failed.failed:
            sys.stderr.write(f"\n--- operator log ({op.log_path}) ---\n{op.log()}\n")


@pytest.fixture
def operator(operator_factory: Any) -> Operator:
    """The operator, started, scoped to the test's namespace."""
    op: Operator = operator_factory().start()
    return op


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]


@pytest.fixture
def checkpoint_pvc(core: client.CoreV1Api, namespace: str) -> Iterator[str]:
    """PVC ``ckpt`` pre-bound to a hostPath RWX PV (the local cluster has no provisioner;
    pods with an unbound claim would never schedule)."""
    pv = storage.ensure_checkpoint_claim(core, namespace, "ckpt")
    yield "ckpt"
    storage.delete_volume(core, pv)


@pytest.fixture
def kueue_queue(
    api_client: client.ApiClient, custom: client.CustomObjectsApi, namespace: str
) -> Iterator[str]:
    """A ClusterQueue of 16 GPUs (two whole p4d nodes) for this test, and LocalQueue
    ``team`` over it in the test's namespace; returns the LocalQueue's name."""
    name = f"cq-{namespace}"[:63]
    kueue.apply(api_client, kueue.cluster_queue(name, gpus=16))
    kueue.apply(api_client, kueue.local_queue(namespace, "team", name))
    yield "team"
    try:
        custom.delete_cluster_custom_object("kueue.x-k8s.io", "v1beta1", "clusterqueues", name)
    except ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture(scope="session")
def audit(cluster: LocalCluster) -> AuditLog:
    """The local cluster's apiserver audit log (every request but the control plane's)."""
    log = AuditLog()
    if cluster.name == "external":
        pytest.fail("these tests read the local cluster's audit log", pytrace=False)
    log.offset()  # fails when the log is missing
    return log
