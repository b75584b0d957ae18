"""What the operator says to and hears from the apiserver, as pure functions: the kinds it
uses, kopf's credentials from the client configuration, the pods a PyTorchJob will make,
the message of a refusal. :mod:`spotrun_operator.kubeio.kube` does the I/O."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from spotrun_operator.facts.common import (
    GROUP,
    KIND,
    KUEUE_GROUP,
    KUEUE_VERSION,
    MANAGER,
    PYTORCHJOB_GROUP,
    PYTORCHJOB_KIND,
    PYTORCHJOB_VERSION,
    VERSION,
)
from spotrun_operator.model.plan import Event, Rejected, RunRef

Obj = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
# Existence checks of Secrets read metadata only: the operator never needs their data.
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
# apiVersion of each kind the operator reads, creates or checks.
API_VERSIONS: Mapping[str, str] = {
    "PersistentVolumeClaim": "v1",
    "ServiceAccount": "v1",
    "Secret": "v1",
    "ConfigMap": "v1",
    "Event": "v1",
    "Pod": "v1",
    "Node": "v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
    "Deployment": "apps/v1",
    "PodDisruptionBudget": "policy/v1",
    PYTORCHJOB_KIND: f"{PYTORCHJOB_GROUP}/{PYTORCHJOB_VERSION}",
    KIND: f"{GROUP}/{VERSION}",
    "Workload": f"{KUEUE_GROUP}/{KUEUE_VERSION}",
}
# The apiserver's answers that judge the request itself: retrying cannot help.
REJECTED = frozenset({400, 422})
# How RBAC says no (a 403 that is about the operator's grants, not about the object).
_RBAC_DENIAL = re.compile(r'User ".*" cannot [a-z]+ resource')
# 403s about the moment, not the object: a full quota frees up, a namespace being deleted
# takes the run with it. Neither is a verdict on the spec.
_TRANSIENT_DENIAL = re.compile(r"exceeded quota|is being terminated")


class Refused(Exception):
    """The apiserver refused an object built from a run's spec (400/422, or a denial that
    is not RBAC's), maybe in a dry run: a verdict on the spec, never a reason to retry."""

    def __init__(self, kind: str, name: str, message: str) -> None:
        super().__init__(f"{kind} {name}: {message}")
        self.rejected = Rejected(kind, name, message)


def credentials(cfg: client.Configuration) -> dict[str, Any]:
    """What kopf's ``ConnectionInfo`` needs, from the client's configuration, so that kopf's
    watches and the operator's own calls reach one cluster with one identity.

    The token is read through ``get_api_key_with_prefix``, which runs the configuration's
    refresh hook (rotated service-account tokens, exec plugins); kopf calls the login
    handler again on a 401. Mirrors kopf's own ``login_via_client`` (nolar/kopf,
    kopf/_core/intents/piggybacking.py), minus its loading of the default configuration."""
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix(
        "authorization"
    )
    parts = header.split(" ", 1) if header else []
    scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0] if parts else None)
    return {
        "server": cfg.host,
        "ca_path": cfg.ssl_ca_cert,
        "insecure": not cfg.verify_ssl,
        "username": cfg.username or None,
        "password": cfg.password or None,
        "scheme": scheme,
        "token": token,
        "certificate_path": cfg.cert_file,
        "private_key_path": cfg.key_file,
    }


def replica_pods(job: Mapping[str, Any]) -> list[Obj]:
    """One pod per replica type of a PyTorchJob, as the training operator would make it
    from the template (name ``<job>-<type>-0``): what a server-side dry run validates."""
    meta = job["metadata"]
    pods = []
    for rtype, replica in sorted((job.get("spec") or {}).get("pytorchReplicaSpecs", {}).items()):
        template = replica.get("template") or {}
        tmeta = dict(template.get("metadata") or {})
        pods.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    **tmeta,
                    "name": f"{meta['name']}-{str(rtype).lower()}-0",
                    "namespace": meta["namespace"],
                },
                "spec": template.get("spec") or {},
            }
        )
    return pods


def refused(exc: ApiException) -> bool:
    """True when the apiserver judged the object itself (invalid, or denied by an admission
    webhook or policy, PodSecurity included), not the operator's rights (RBAC)."""
    if exc.status in REJECTED:
        return True
    message = message_of(exc)
    return exc.status == 403 and not (
        _RBAC_DENIAL.search(message) or _TRANSIENT_DENIAL.search(message)
    )


def rbac_denied(exc: ApiException) -> bool:
    """True when RBAC said no: the operator lacks a grant."""
    return exc.status == 403 and bool(_RBAC_DENIAL.search(message_of(exc)))


def message_of(exc: ApiException) -> str:
    """The apiserver's own message (a Status object's), else the HTTP reason."""
    try:
        return str(json.loads(exc.body or "")["message"])
    except (ValueError, KeyError, TypeError):
        return f"{exc.status} {exc.reason}"


def raw_template_job(run: Mapping[str, Any]) -> Obj:
    """A PyTorchJob holding the run's pod template and env exactly as the user wrote them:
    when spotrun cannot even merge them, a dry run of this lets the CRD's schema name the
    field of the wrong type."""
    meta, spec = run["metadata"], run.get("spec") or {}
    template = copy.deepcopy(spec.get("podTemplate") or {})
    if "env" in spec:
        check = {"name": "env-check", "image": "env-check", "env": copy.deepcopy(spec["env"])}
        pod = template.setdefault("spec", {}) if isinstance(template, dict) else {}
        if isinstance(pod, dict) and isinstance(pod.get("containers", []), list):
            pod["containers"] = [*pod.get("containers", []), check]
    return {
        "apiVersion": API_VERSIONS[PYTORCHJOB_KIND],
        "kind": PYTORCHJOB_KIND,
        "metadata": {"name": f"{meta['name']}-check", "namespace": meta["namespace"]},
        "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "template": template}}},
    }


def event_body(ref: RunRef, ev: Event, name: str, now: str, instance: str) -> Obj:
    """A core/v1 Event about the run (``ev.message`` cut to the apiserver's 1024 bytes)."""
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": ref.namespace},
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
        "reportingInstance": instance,
    }
