"""The only module that talks to the Kubernetes API (synchronous; called from threads).

Objects travel as plain JSON dicts: the pure modules never see client models, and raw
requests let us choose content types (merge patch, metadata-only reads) precisely.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast
from urllib.parse import quote

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from spotrun_operator import __version__
from spotrun_operator.builders import RunRef
from spotrun_operator.common import (
    GROUP,
    KIND,
    LABEL_RUN,
    MANAGER,
    PLURAL,
    PYTORCHJOB_GROUP,
    PYTORCHJOB_PLURAL,
    PYTORCHJOB_VERSION,
    VERSION,
    fmt_time,
    parse_job_name,
    utcnow,
)
from spotrun_operator.plan import (
    Action,
    CreateJob,
    DeleteJob,
    DeletePods,
    EnsureObjects,
    Event,
)

log = logging.getLogger(__name__)
Obj = dict[str, Any]

USER_AGENT = f"spotrun-operator/{__version__}"
MERGE_PATCH = "application/merge-patch+json"
# Existence checks of Secrets read metadata only: the operator never needs their data.
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"

# Collection path of each kind the operator creates or checks (namespaced).
_COLLECTIONS: Mapping[str, str] = {
    "PersistentVolumeClaim": "/api/v1/namespaces/{ns}/persistentvolumeclaims",
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    "PyTorchJob": f"/apis/{PYTORCHJOB_GROUP}/{PYTORCHJOB_VERSION}/namespaces/{{ns}}/"
    f"{PYTORCHJOB_PLURAL}",
    "Event": "/api/v1/namespaces/{ns}/events",
}


def load_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG)."""
    loader: Any = config  # partly untyped across client versions
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        loader.load_incluster_config()
        api = client.ApiClient()
    else:
        api = cast(client.ApiClient, loader.new_client_from_config(config_file=kubeconfig))
    # Names the operator in audit logs and apiserver metrics (kopf's own calls say "kopf/").
    api.user_agent = USER_AGENT
    return api


def _q(s: str) -> str:
    return quote(s, safe="")


class Kube:
    def __init__(self, api: client.ApiClient, timeout: float = 30.0) -> None:
        self.api = api
        self.timeout = timeout
        self.instance = os.environ.get("POD_NAME") or socket.gethostname()

    # --- raw requests ---------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> Any:
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type
        _, url, headers, payload, _ = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()) or None,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        resp: Any = self.api.call_api(
            method, url, header_params=headers, body=payload, _request_timeout=self.timeout
        )
        data: bytes = resp.read() or b""
        if not 200 <= resp.status <= 299:
            raise ApiException.from_response(
                http_resp=resp, body=data.decode("utf-8", "replace"), data=None
            )
        return json.loads(data) if data else None

    def _get_or_none(self, path: str, accept: str = "application/json") -> Obj | None:
        try:
            return dict(self.request("GET", path, accept=accept))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    # --- reads ----------------------------------------------------------------------
    def get_run(self, namespace: str, name: str) -> Obj | None:
        return self._get_or_none(
            f"/apis/{GROUP}/{VERSION}/namespaces/{_q(namespace)}/{PLURAL}/{_q(name)}"
        )

    def list_jobs(self, namespace: str, run: str, owner_uid: str) -> dict[int, Obj]:
        """The run's PyTorchJobs by attempt number (only those the run owns: a job of an
        earlier run with the same name may still be on its way out)."""
        path = _COLLECTIONS["PyTorchJob"].format(ns=_q(namespace))
        items = self.request("GET", path, query={"labelSelector": f"{LABEL_RUN}={run}"})["items"]
        jobs: dict[int, Obj] = {}
        for job in items:
            owners = (job.get("metadata") or {}).get("ownerReferences") or []
            if not any(o.get("uid") == owner_uid for o in owners):
                continue
            n = parse_job_name(run, job["metadata"]["name"])
            if n is not None:
                jobs[n] = job
        return jobs

    def list_pods(self, namespace: str, run: str) -> list[Obj]:
        path = f"/api/v1/namespaces/{_q(namespace)}/pods"
        return list(
            self.request("GET", path, query={"labelSelector": f"{LABEL_RUN}={run}"})["items"]
        )

    def get_node(self, name: str) -> Obj | None:
        return self._get_or_none(f"/api/v1/nodes/{_q(name)}")

    def missing(self, namespace: str, refs: Sequence[tuple[str, str]]) -> list[str]:
        """``"Kind name"`` of each referenced object that does not exist."""
        out = []
        for kind, name in refs:
            path = _COLLECTIONS[kind].format(ns=_q(namespace)) + f"/{_q(name)}"
            if self._get_or_none(path, accept=METADATA_ONLY) is None:
                out.append(f"{kind} {name}")
        return out

    # --- writes ---------------------------------------------------------------------
    def patch_run_status(
        self, namespace: str, name: str, resource_version: str, status: Obj
    ) -> bool:
        """Merge-patch the run's status if nobody wrote the run since we read it.

        The resourceVersion precondition turns the write into a compare-and-swap: this is
        what makes recording an outcome (and bumping its counter) exactly-once. False on
        409 Conflict: re-observe and decide again."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{_q(namespace)}/{PLURAL}/{_q(name)}/status"
        try:
            self.request("PATCH", path, body=body, content_type=MERGE_PATCH)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def create(self, obj: Mapping[str, Any]) -> bool:
        """Create ``obj``; False when it already exists (deterministic names: a 409 means a
        previous reconcile, maybe of a killed operator, created it)."""
        ns = obj["metadata"]["namespace"]
        path = _COLLECTIONS[str(obj["kind"])].format(ns=_q(ns))
        try:
            self.request("POST", path, body=dict(obj))
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def _delete(self, path: str, body: Obj) -> None:
        try:
            self.request("DELETE", path, body=body)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def delete_job(self, namespace: str, name: str) -> None:
        # Background: the job is gone at once (so the training operator cannot recreate a
        # pod), its pods follow through the garbage collector with their grace period.
        path = _COLLECTIONS["PyTorchJob"].format(ns=_q(namespace)) + f"/{_q(name)}"
        self._delete(path, {"propagationPolicy": "Background"})

    def delete_pod(self, namespace: str, name: str, grace_seconds: int) -> None:
        path = f"/api/v1/namespaces/{_q(namespace)}/pods/{_q(name)}"
        self._delete(path, {"gracePeriodSeconds": grace_seconds})

    def post_event(self, ref: RunRef, ev: Event) -> None:
        now = fmt_time(utcnow())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            # Names grow with time, so events of the same second still list in order.
            "metadata": {"name": f"{ref.name}.{time.time_ns():x}", "namespace": ref.namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": ref.name,
                "namespace": ref.namespace,
                "uid": ref.uid,
            },
            "type": ev.type,
            "reason": ev.reason,
            "message": ev.message[:1024],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": MANAGER},
            "reportingComponent": MANAGER,
            "reportingInstance": self.instance,
        }
        try:
            self.request("POST", _COLLECTIONS["Event"].format(ns=_q(ref.namespace)), body=body)
        except ApiException as exc:  # events are best effort: never fail a reconcile
            log.warning(
                "event %s for %s/%s not posted: %s", ev.reason, ref.namespace, ref.name, exc.status
            )

    def execute(self, namespace: str, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, EnsureObjects):
                for obj in action.objects:
                    self.create(obj)
            elif isinstance(action, CreateJob):
                if self.create(action.body):
                    log.info("created PyTorchJob %s/%s", namespace, action.body["metadata"]["name"])
            elif isinstance(action, DeleteJob):
                self.delete_job(namespace, action.name)
            elif isinstance(action, DeletePods):
                for name in action.names:
                    self.delete_pod(namespace, name, action.grace_seconds)
