"""Bring the local control plane up and down: kwokctl, the training operator, the fleet.

Everything is idempotent: ``ensure_cluster`` reuses a healthy cluster, restarts a dead
training operator, and recreates missing fleet nodes, so tests and the demo can call it
freely.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import socket
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from spotrun_dev import images, kueue, kwok_config, paths, webhook_certs
from spotrun_dev.cluster_apply import apply_manifests, free_port, pid_alive, stop_group

# Re-exported: tests, the demo and the bench reach the whole local cluster through here.
from spotrun_dev.fleet_state import ensure_fleet as ensure_fleet
from spotrun_dev.fleet_state import fleet_spec_from_env as fleet_spec_from_env
from spotrun_dev.waiting import ClusterError as ClusterError
from spotrun_dev.waiting import wait_for as wait_for

log = logging.getLogger("spotrun_dev.cluster")

CLUSTER_NAME = "spotrun"
KUBEFLOW_NS = "kubeflow"
WEBHOOK_SECRET = "training-operator-webhook-cert"
WEBHOOK_CONFIG = "validator.training-operator.kubeflow.org"  # the name the operator injects into
PYTORCHJOB_WEBHOOK_PATH = "/validate-kubeflow-org-v1-pytorchjob"
STATE_FILE = paths.CLUSTER_DIR / "state.json"
TRAINING_OPERATOR_LOG = paths.CLUSTER_DIR / "training-operator.log"
# The Worker pods' init containers: none (the file explains why: the trainer waits for its
# master itself); the process reads it once, so a changed file restarts it.
PYTORCH_INIT_TEMPLATE = paths.REPO_ROOT / "manifests" / "eks" / "pytorch-init-container.yaml"

# cert-controller expects the kubelet to mount its Secret here (a fixed path in the binary).
WEBHOOK_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")


@dataclass(frozen=True)
class LocalCluster:
    name: str
    kubeconfig: Path

    def api_client(self) -> client.ApiClient:
        return config.new_client_from_config(config_file=str(self.kubeconfig))


def _env() -> dict[str, str]:
    return {**os.environ, "KWOK_WORKDIR": str(paths.KWOK_WORKDIR)}


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    log.debug("run %s", " ".join(cmd))
    return subprocess.run(cmd, text=True, capture_output=True, env=_env(), **kw)


def build_binaries() -> None:
    """hack/build-binaries.sh: a no-op when every stamp matches its pinned version."""
    proc = subprocess.run(["bash", str(paths.BUILD_SCRIPT)], text=True)
    if proc.returncode != 0:
        raise ClusterError("building the control-plane binaries failed (see output above)")


def _apiserver_healthy(kubeconfig: Path) -> bool:
    if not kubeconfig.exists():
        return False
    try:
        api = config.new_client_from_config(config_file=str(kubeconfig))
        with api:
            client.VersionApi(api).get_code(_request_timeout=3)
        return True
    except Exception:
        return False


def _load_state() -> dict[str, Any]:
    try:
        return dict(json.loads(STATE_FILE.read_text()))
    except (OSError, ValueError):
        return {}


def create_control_plane() -> None:
    """kwokctl create cluster with our binaries (nothing is downloaded)."""
    paths.CLUSTER_DIR.mkdir(parents=True, exist_ok=True)
    cfg = paths.CLUSTER_DIR / "kwokctl.yaml"
    cfg.write_text(kwok_config.default_config_text())
    # A stale cluster of the same name (a killed session) would make create fail.
    _run([str(paths.binary("kwokctl")), "delete", "cluster", "--name", CLUSTER_NAME])
    paths.KUBECONFIG.unlink(missing_ok=True)
    proc = _run(
        [
            str(paths.binary("kwokctl")),
            "create",
            "cluster",
            "--name",
            CLUSTER_NAME,
            "--config",
            str(cfg),
            "--kubeconfig",
            str(paths.KUBECONFIG),
            "--wait",
            "3m",
        ]
    )
    if proc.returncode != 0:
        raise ClusterError(f"kwokctl create cluster failed:\n{proc.stdout}\n{proc.stderr}")


def delete_cluster() -> None:
    """Stop the real nodes and the training operator; delete the cluster with all its state."""
    from spotrun_dev import realnodes

    realnodes.down(None)
    stop_training_operator()
    kueue.stop(_load_state())
    _run([str(paths.binary("kwokctl")), "delete", "cluster", "--name", CLUSTER_NAME])
    paths.KUBECONFIG.unlink(missing_ok=True)
    STATE_FILE.unlink(missing_ok=True)


def install_training_operator_prereqs(api: client.ApiClient, webhook_port: int) -> None:
    """PyTorchJob CRD (from the module cache), webhook Secret and webhook configuration."""
    v = paths.versions()
    src = paths.module_dir("github.com/kubeflow/training-operator", v["TRAINING_OPERATOR_VERSION"])
    crd = yaml.safe_load((src / "manifests/base/crds/kubeflow.org_pytorchjobs.yaml").read_text())
    core = client.CoreV1Api(api)
    try:
        core.create_namespace({"metadata": {"name": KUBEFLOW_NS}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    apply_manifests(api, [crd])
    ext = client.ApiextensionsV1Api(api)
    wait_for(
        "the PyTorchJob CRD to be established",
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in (
                ext.read_custom_resource_definition(crd["metadata"]["name"]).status.conditions or []
            )
        ),
        timeout=60,
    )
    # Keep an existing Secret: cert-controller may already have injected its CA.
    try:
        core.read_namespaced_secret(WEBHOOK_SECRET, KUBEFLOW_NS)
    except ApiException as exc:
        if exc.status != 404:
            raise
        certs = _machine_webhook_certs()
        core.create_namespaced_secret(
            KUBEFLOW_NS,
            {"metadata": {"name": WEBHOOK_SECRET}, "type": "Opaque", "data": certs.secret_data()},
        )
    apply_manifests(api, [build_webhook_configuration(src, webhook_port)])


def build_webhook_configuration(src: Path, port: int) -> dict[str, Any]:
    """The operator's PyTorchJob validating webhook, pointed at its loopback port."""
    docs = [
        d
        for d in yaml.safe_load_all((src / "manifests/base/webhook/manifests.yaml").read_text())
        if d
    ]
    vwc = next(d for d in docs if d["kind"] == "ValidatingWebhookConfiguration")
    hooks = [
        w
        for w in vwc["webhooks"]
        if w["clientConfig"]["service"]["path"] == PYTORCHJOB_WEBHOOK_PATH
    ]
    if not hooks:
        raise ClusterError("no PyTorchJob webhook in the training operator's manifests")
    for hook in hooks:
        path = hook["clientConfig"].pop("service")["path"]
        hook["clientConfig"]["url"] = f"https://127.0.0.1:{port}{path}"
        hook["timeoutSeconds"] = 10
    return {
        "apiVersion": vwc["apiVersion"],
        "kind": vwc["kind"],
        "metadata": {"name": WEBHOOK_CONFIG},
        "webhooks": hooks,
    }


def _init_template_key() -> str:
    return hashlib.sha256(PYTORCH_INIT_TEMPLATE.read_bytes()).hexdigest()[:16]


def stop_training_operator() -> None:
    stop_group(_load_state().get("trainingOperatorPid"))


def _machine_webhook_certs() -> webhook_certs.WebhookCerts:
    """The certificates already in the training operator's fixed cert directory, if any.

    That directory is one per machine, and a running training operator reloads whatever is
    written there; a second local cluster (a CI clone beside a developer's) must therefore
    serve the same certificates, or it would break the first one's webhook.
    """
    files = {k: WEBHOOK_CERT_DIR / k for k in ("ca.crt", "ca.key", "tls.crt", "tls.key")}
    if all(f.is_file() for f in files.values()):
        return webhook_certs.WebhookCerts(
            ca_crt=files["ca.crt"].read_bytes(),
            ca_key=files["ca.key"].read_bytes(),
            tls_crt=files["tls.crt"].read_bytes(),
            tls_key=files["tls.key"].read_bytes(),
        )
    return webhook_certs.generate()


def mount_webhook_secret(core: client.CoreV1Api) -> None:
    """Do what the kubelet's Secret volume does for the operator's pod: project the
    webhook Secret's keys as files into the directory the webhook server reads."""
    secret = core.read_namespaced_secret(WEBHOOK_SECRET, KUBEFLOW_NS)
    WEBHOOK_CERT_DIR.mkdir(parents=True, exist_ok=True)
    for key, value in (secret.data or {}).items():
        target = WEBHOOK_CERT_DIR / key
        target.write_bytes(base64.b64decode(value))
        target.chmod(0o600)


def start_training_operator(webhook_port: int) -> dict[str, Any]:
    """Run the Kubeflow training operator as a local process against the cluster."""
    probe_port, metrics_port = free_port(), free_port()
    out = TRAINING_OPERATOR_LOG.open("ab")
    proc = subprocess.Popen(
        [
            str(paths.binary("training-operator")),
            "--enable-scheme=pytorchjob",
            # Worker pods wait for the master's DNS name in this init container; its
            # default image (alpine:3.10) is on no registry reachable here.
            f"--pytorch-init-container-image={images.PYTORCH_INIT_REF}",
            f"--pytorch-init-container-template-file={PYTORCH_INIT_TEMPLATE}",
            f"--webhook-server-port={webhook_port}",
            f"--health-probe-bind-address=127.0.0.1:{probe_port}",
            f"--metrics-bind-address=127.0.0.1:{metrics_port}",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, "KUBECONFIG": str(paths.KUBECONFIG), "MY_POD_NAMESPACE": KUBEFLOW_NS},
        start_new_session=True,
    )
    state = {
        "trainingOperatorPid": proc.pid,
        "pytorchInitTemplate": _init_template_key(),
        "webhookPort": webhook_port,
        "probePort": probe_port,
        "metricsPort": metrics_port,
    }

    def ready() -> bool:
        if proc.poll() is not None:
            raise ClusterError(
                f"training operator exited with {proc.returncode}; see {TRAINING_OPERATOR_LOG}"
            )
        with urllib.request.urlopen(f"http://127.0.0.1:{probe_port}/readyz", timeout=2) as r:
            return bool(r.status == 200)

    wait_for("the training operator to become ready", ready, timeout=120)
    wait_for(
        "the training operator webhook to listen", lambda: _tls_listening(webhook_port), timeout=60
    )
    return state


def _tls_listening(port: int) -> bool:
    """The webhook serves TLS on loopback (the apiserver verifies the cert itself)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        return tls.version() is not None


def fresh_namespace(core: client.CoreV1Api, name: str, timeout: float = 180) -> None:
    """Delete ``name`` with everything in it (if present), wait until it is gone, create it."""
    try:
        core.delete_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise

    def gone() -> bool:
        try:
            core.read_namespace(name)
        except ApiException as exc:
            return bool(exc.status == 404)
        return False

    wait_for(f"namespace {name} to be deleted", gone, timeout=timeout)
    core.create_namespace({"metadata": {"name": name}})


def ensure_cluster(with_fleet: bool = True, real_nodes: int | None = None) -> LocalCluster:
    """A healthy local cluster with the training operator, the kwok fleet and ``real_nodes``
    real nodes (default: $REAL_NODES, 3); reuse what is healthy."""
    from spotrun_dev import example_images, realnodes

    build_binaries()
    paths.CLUSTER_DIR.mkdir(parents=True, exist_ok=True)
    state = _load_state()
    if not _apiserver_healthy(paths.KUBECONFIG):
        stop_training_operator()
        kueue.stop(state)
        realnodes.down(None)  # their certificates and routes belong to the old cluster
        state = {}
        create_control_plane()
        wait_for("the apiserver", lambda: _apiserver_healthy(paths.KUBECONFIG), timeout=120)
    cluster = LocalCluster(CLUSTER_NAME, paths.KUBECONFIG)
    with cluster.api_client() as api:
        webhook_port = int(state.get("webhookPort") or free_port())
        install_training_operator_prereqs(api, webhook_port)
        if state.get("pytorchInitTemplate") != _init_template_key():
            stop_training_operator()  # started with another init-container template
        if not pid_alive(state.get("trainingOperatorPid")):
            mount_webhook_secret(client.CoreV1Api(api))
            state = {**state, **start_training_operator(webhook_port)}
            STATE_FILE.write_text(json.dumps(state, indent=2))  # before anything else can fail
        state = {**state, **kueue.ensure(api, state)}
        STATE_FILE.write_text(json.dumps(state, indent=2))
        if with_fleet:
            ensure_fleet(client.CoreV1Api(api))
        realnodes.ensure_real_nodes(client.CoreV1Api(api), real_nodes)
        # The examples' images, where the real nodes pull them from (the registry runs now).
        example_images.ensure_examples()
        kueue.ensure_fleet_queue(api)  # its quota is what the spot nodes now have
    return cluster
