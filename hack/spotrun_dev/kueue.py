"""Kueue in the local cluster: its manager as a host process, built from its Go module.

Like the training operator, Kueue runs beside the control plane with the admin
kubeconfig; its CRDs and webhook configurations are read from the module cache at run
time (``config/components`` of sigs.k8s.io/kueue at KUEUE_VERSION) and never copied into
the repository. Only the webhooks of what it manages here are registered, pointed at its
loopback port: Kueue's own API (ClusterQueue, ResourceFlavor, Workload, Cohort) and the
PyTorchJob integration. Registering the others (Pod, Job, Deployment, ...) with
``failurePolicy: Fail`` for integrations that are switched off would refuse every such
object.

The queue setup the tests and the README use: one ResourceFlavor ``spot`` over the spot
nodes, ClusterQueues made per test (:func:`cluster_queue`) and a LocalQueue per namespace
(:func:`local_queue`), WorkloadPriorityClasses ``low`` and ``high``. cluster-up also keeps
a ClusterQueue ``spot-fleet`` whose quota is what the spot nodes have
(:func:`ensure_fleet_queue`): a LocalQueue pointing at it is all a namespace needs.
"""

from __future__ import annotations

import logging
import subprocess
import urllib.request
from pathlib import Path
from typing import Any, Final

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.utils import parse_quantity

from spotrun_dev import paths, webhook_certs
from spotrun_dev.cluster_apply import (
    apply_manifests,
    free_port,
    pid_alive,
    stop_group,
    wait_established,
)
from spotrun_dev.waiting import ClusterError, wait_for

log = logging.getLogger("spotrun_dev.kueue")

MODULE: Final = "sigs.k8s.io/kueue"
NAMESPACE: Final = "kueue-system"
LOG: Final = paths.CLUSTER_DIR / "kueue.log"
CONFIG: Final = paths.CLUSTER_DIR / "kueue-config.yaml"
CERT_DIR: Final = paths.CLUSTER_DIR / "kueue-certs"
# Without its internal cert management (whose certificates name the in-cluster Service,
# not the loopback address the apiserver calls here), Kueue serves metrics with the
# certificate at this fixed path (sigs.k8s.io/kueue cmd/kueue/main.go, metricsCertPath).
METRICS_CERT_DIR: Final = Path("/etc/kueue/metrics/certs")
FLAVOR: Final = "spot"
FLEET_QUEUE: Final = "spot-fleet"
# The spot node group's capacity label (the kwok fleet and the real spot nodes both carry
# it, as EKS managed nodes do): Kueue adds it as a node selector to the pods of an admitted
# workload.
SPOT_NODE_LABELS: Final = {"eks.amazonaws.com/capacityType": "SPOT"}
PRIORITIES: Final = {"low": 100, "high": 1000}
# Webhook paths kept from Kueue's manifests (everything else is an integration left off).
_KEPT_WEBHOOKS: Final = ("-kueue-x-k8s-io-", "-kubeflow-org-v1-pytorchjob")
_WEBHOOK_NAMES: Final = {
    "MutatingWebhookConfiguration": "kueue-mutating-webhook-configuration",
    "ValidatingWebhookConfiguration": "kueue-validating-webhook-configuration",
}


def source() -> Path:
    return paths.module_dir(MODULE, paths.versions()["KUEUE_VERSION"])


def crds(src: Path) -> list[dict[str, Any]]:
    folder = src / "config" / "components" / "crd" / "bases"
    return [yaml.safe_load(f.read_text()) for f in sorted(folder.glob("*.yaml"))]


def webhook_configurations(src: Path, port: int, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's webhook configurations, trimmed to what runs here, served on loopback."""
    text = (src / "config" / "components" / "webhook" / "manifests.yaml").read_text()
    out = []
    for doc in (d for d in yaml.safe_load_all(text) if d):
        hooks = [
            w
            for w in doc["webhooks"]
            if any(k in w["clientConfig"]["service"]["path"] for k in _KEPT_WEBHOOKS)
        ]
        for hook in hooks:
            path = hook["clientConfig"].pop("service")["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca_bundle}
            hook["timeoutSeconds"] = 10
        name = _WEBHOOK_NAMES[doc["kind"]]
        out.append({**doc, "metadata": {"name": name}, "webhooks": hooks})
    return out


def configuration(webhook_port: int, probe_port: int, metrics_port: int) -> dict[str, Any]:
    """Kueue's Configuration (config.kueue.x-k8s.io/v1beta1): the PyTorchJob integration
    only, jobs without a queue name left alone, our own webhook certificates."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta1",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{probe_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
        "webhook": {"port": webhook_port, "host": "127.0.0.1", "certDir": str(CERT_DIR)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": ["kubeflow.org/pytorchjob"]},
    }


def _certs() -> webhook_certs.WebhookCerts:
    """The serving certificates in CERT_DIR (made once; kept across restarts)."""
    names = {"ca.crt": "ca_crt", "ca.key": "ca_key", "tls.crt": "tls_crt", "tls.key": "tls_key"}
    if not all((CERT_DIR / f).is_file() for f in names):
        certs = webhook_certs.generate()
        CERT_DIR.mkdir(parents=True, exist_ok=True)
        for f, attr in names.items():
            (CERT_DIR / f).write_bytes(getattr(certs, attr))
            (CERT_DIR / f).chmod(0o600)
    return webhook_certs.WebhookCerts(
        **{attr: (CERT_DIR / f).read_bytes() for f, attr in names.items()}
    )


def _metrics_certs(certs: webhook_certs.WebhookCerts) -> None:
    """The metrics certificate at Kueue's fixed path (kept when present: one per machine)."""
    files = {"tls.crt": certs.tls_crt, "tls.key": certs.tls_key}
    if all((METRICS_CERT_DIR / f).is_file() for f in files):
        return
    METRICS_CERT_DIR.mkdir(parents=True, exist_ok=True)
    for f, data in files.items():
        (METRICS_CERT_DIR / f).write_bytes(data)
        (METRICS_CERT_DIR / f).chmod(0o600)


def install(api: client.ApiClient, webhook_port: int) -> None:
    """CRDs, namespace, webhook configurations (idempotent: server-side apply)."""
    src = source()
    docs = crds(src)
    apply_manifests(api, docs)
    for doc in docs:
        wait_established(api, doc["metadata"]["name"])
    core = client.CoreV1Api(api)
    if not any(n.metadata.name == NAMESPACE for n in core.list_namespace().items):
        core.create_namespace({"metadata": {"name": NAMESPACE}})
    ca = _certs().secret_data()["ca.crt"]
    apply_manifests(api, webhook_configurations(src, webhook_port, ca))


def start(webhook_port: int) -> dict[str, Any]:
    """Start Kueue's manager against the cluster; wait until it is ready and serving."""
    probe_port, metrics_port = free_port(), free_port()
    _metrics_certs(_certs())
    CONFIG.write_text(yaml.safe_dump(configuration(webhook_port, probe_port, metrics_port)))
    out = LOG.open("ab")
    proc = subprocess.Popen(
        [
            str(paths.binary("kueue")),
            f"--config={CONFIG}",
            # Its on-demand visibility API server would take a fixed port (8082) and needs an
            # APIService registration: nothing here uses it.
            "--feature-gates=VisibilityOnDemand=false",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={"KUBECONFIG": str(paths.KUBECONFIG), "PATH": "/usr/bin:/bin"},
        start_new_session=True,
    )

    def ready() -> bool:
        if proc.poll() is not None:
            raise ClusterError(f"kueue exited with {proc.returncode}; see {LOG}")
        with urllib.request.urlopen(f"http://127.0.0.1:{probe_port}/readyz", timeout=2) as r:
            return bool(r.status == 200)

    try:
        wait_for("kueue to become ready", ready, timeout=120)
    except ClusterError:
        stop_group(proc.pid)  # not recorded anywhere yet: leave no orphan behind
        raise
    return {"kueuePid": proc.pid, "kueueWebhookPort": webhook_port}


def ensure(api: client.ApiClient, state: dict[str, Any]) -> dict[str, Any]:
    """Kueue installed and running (restarted if it died); returns its state entries."""
    port = int(state.get("kueueWebhookPort") or free_port())
    install(api, port)
    if pid_alive(state.get("kueuePid")):
        return {"kueuePid": state["kueuePid"], "kueueWebhookPort": port}
    new = start(port)
    ensure_flavor_and_priorities(api)
    return new


def ensure_flavor_and_priorities(api: client.ApiClient) -> None:
    """The ResourceFlavor over the spot nodes and the low/high WorkloadPriorityClasses."""
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "kueue.x-k8s.io/v1beta1",
            "kind": "ResourceFlavor",
            "metadata": {"name": FLAVOR},
            "spec": {"nodeLabels": dict(SPOT_NODE_LABELS)},
        }
    ]
    docs += [
        {
            "apiVersion": "kueue.x-k8s.io/v1beta1",
            "kind": "WorkloadPriorityClass",
            "metadata": {"name": name},
            "value": value,
            "description": f"spotrun-dev: {name} priority",
        }
        for name, value in PRIORITIES.items()
    ]
    # Kueue's own webhooks validate these: retry while its webhook server comes up.
    wait_for("kueue's webhooks to accept objects", lambda: _try_apply(api, docs), timeout=60)


def _try_apply(api: client.ApiClient, docs: list[dict[str, Any]]) -> bool:
    try:
        apply_manifests(api, docs)
    except ApiException as exc:
        log.debug("kueue not accepting objects yet: %s", exc.reason)
        return False
    return True


def cluster_queue(name: str, gpus: int, cpu: str = "1000", memory: str = "4Ti") -> dict[str, Any]:
    """A ClusterQueue over the spot flavor; ``gpus`` is the quota that matters (cpu and
    memory are generous: they only have to be covered for a workload to be admissible)."""
    resources: list[dict[str, Any]] = [
        {"name": "cpu", "nominalQuota": cpu},
        {"name": "memory", "nominalQuota": memory},
        {"name": "nvidia.com/gpu", "nominalQuota": gpus},
    ]
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta1",
        "kind": "ClusterQueue",
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {},
            "preemption": {"withinClusterQueue": "LowerPriority"},
            "resourceGroups": [
                {
                    "coveredResources": [r["name"] for r in resources],
                    "flavors": [{"name": FLAVOR, "resources": resources}],
                }
            ],
        },
    }


def ensure_fleet_queue(api: client.ApiClient) -> dict[str, Any]:
    """ClusterQueue ``spot-fleet`` over the spot nodes as they are now (kwok and real ones;
    re-applied on every cluster-up). Returns it."""
    selector = ",".join(f"{k}={v}" for k, v in SPOT_NODE_LABELS.items())
    queue = fleet_queue(client.CoreV1Api(api).list_node(label_selector=selector).items)
    apply(api, queue)
    return queue


def fleet_queue(nodes: list[client.V1Node]) -> dict[str, Any]:
    """ClusterQueue ``spot-fleet`` whose quota is what ``nodes`` can allocate."""
    total = {
        r: sum(parse_quantity((n.status.allocatable or {}).get(r, "0")) for n in nodes)
        for r in ("nvidia.com/gpu", "cpu", "memory")
    }
    return cluster_queue(
        FLEET_QUEUE,
        gpus=int(total["nvidia.com/gpu"]),
        cpu=str(int(total["cpu"])),
        memory=str(int(total["memory"])),
    )


def local_queue(
    namespace: str, name: str = FLEET_QUEUE, cluster_queue_name: str = FLEET_QUEUE
) -> dict[str, Any]:
    """A LocalQueue (by default ``spot-fleet``, over the ClusterQueue of that name)."""
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta1",
        "kind": "LocalQueue",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterQueue": cluster_queue_name},
    }


def apply(api: client.ApiClient, *docs: dict[str, Any]) -> None:
    """Server-side apply of Kueue objects (through Kueue's webhooks)."""
    wait_for("kueue to accept the objects", lambda: _try_apply(api, list(docs)), timeout=60)


def stop(state: dict[str, Any]) -> None:
    stop_group(state.get("kueuePid"))
