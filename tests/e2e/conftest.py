"""Fixtures for tests against a real Kubernetes control plane.

The session brings up the local cluster (kube-apiserver, controller-manager, scheduler,
etcd, kwok and the Kubeflow training operator, all built from Go modules) unless
E2E_KUBECONFIG names another cluster. A cluster that cannot start fails the run: these
tests are never skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from spotrun_dev.cluster import ClusterError, LocalCluster, ensure_cluster, ensure_fleet


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


@pytest.fixture
def fleet(core: client.CoreV1Api) -> None:
    """The fake spot fleet as freshly registered: earlier tests may have reclaimed nodes."""
    ensure_fleet(core)
