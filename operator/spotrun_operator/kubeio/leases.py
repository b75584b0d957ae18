"""The Lease calls of the leader election (:mod:`leader`): one coordination.k8s.io/v1 Lease,
read, created and replaced (a compare-and-swap on its resourceVersion) through the
operator's client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from spotrun_operator.kubeio.kube import Kube

Obj = dict[str, Any]


class Leases:
    """``leader.LeaseStore`` on the operator's API client."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    def get_lease(self, namespace: str, name: str, timeout: float) -> Obj | None:
        """The Lease, or None when there is none."""
        try:
            return dict(self.kube.request("GET", _lease_path(namespace, name), timeout=timeout))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create_lease(self, body: Mapping[str, Any], timeout: float) -> Obj | None:
        """Create the Lease; None when another candidate created it first (409)."""
        meta = body["metadata"]
        try:
            path = _lease_path(str(meta["namespace"]))
            return dict(self.kube.request("POST", path, body=dict(body), timeout=timeout))
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise

    def replace_lease(self, body: Mapping[str, Any], timeout: float) -> Obj | None:
        """Replace the Lease if its resourceVersion is still ``body``'s (compare-and-swap);
        None when someone wrote it since (409)."""
        meta = body["metadata"]
        path = _lease_path(str(meta["namespace"]), str(meta["name"]))
        try:
            return dict(self.kube.request("PUT", path, body=dict(body), timeout=timeout))
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise


def _lease_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return f"{base}/{name}" if name else base
