"""Operator fixtures: the CRD applied from crds/, ``spotrun-operator`` as a subprocess
scoped to the test's namespace (killable with SIGKILL), and a bound checkpoint PVC."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kube_helpers import poll
from spotrun_dev.cluster import LocalCluster
from spotrun_operator.kube import Kube

ROOT = Path(__file__).resolve().parents[3]
CRD = ROOT / "crds" / "trainingruns.spotrun.dev.yaml"
# Short delays so a whole recovery takes seconds; the logic is the production one.
FAST_FLAGS = (
    "--pricing=table",
    "--backoff-base-seconds=1",
    "--backoff-jitter=0",
    "--failure-settle-seconds=1",
    "--config-error-grace-seconds=3",
    "--resync-seconds=5",
    # kwok's fake nodes flap to Ready=Unknown for seconds about once a minute (heartbeats
    # vs the controller-manager's grace); real node losses are injected as deletions,
    # which count at once whatever this grace is.
    "--node-lost-grace-seconds=600",
)


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
        conds = {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions", [])}
        return conds.get("Established") == "True"

    poll("the TrainingRun CRD to be Established", established, timeout=60)
    return dict(body)


class Operator:
    """``spotrun-operator`` in a subprocess; its log goes to a file the test can show."""

    def __init__(self, kubeconfig: Path, namespace: str, log_path: Path, extra: tuple[str, ...]):
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log_path = log_path
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def command(self) -> list[str]:
        exe = shutil.which("spotrun-operator", path=str(Path(sys.executable).parent))
        base = [exe] if exe else [sys.executable, "-m", "spotrun_operator.main"]
        return [*base, "--namespace", self.namespace, "--metrics-port=0", *FAST_FLAGS, *self.extra]

    def start(self) -> Operator:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        log = self.log_path.open("ab")
        log.write(f"\n=== start #{self.starts + 1}: {' '.join(self.command())}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            self.command(), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        self.starts += 1
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last status write, exactly like an OOM-killed pod."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        useful = [t for t in text if "Handler '" not in t]
        return "\n".join(useful[-lines:])


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
    pv = f"ckpt-{namespace}"
    core.create_persistent_volume(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv, "labels": {"spotrun.dev/e2e": "true"}},
            "spec": {
                "capacity": {"storage": "10Gi"},
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": f"/tmp/spotrun-e2e/{namespace}"},
                "claimRef": {"namespace": namespace, "name": "ckpt"},
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "ckpt"},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": pv,
                "resources": {"requests": {"storage": "10Gi"}},
            },
        },
    )
    poll(
        "the checkpoint PVC to be Bound",
        lambda: (
            core.read_namespaced_persistent_volume_claim("ckpt", namespace).status.phase == "Bound"
        ),
        timeout=60,
    )
    yield "ckpt"
    try:
        core.delete_persistent_volume(pv)
    except ApiException as exc:
        if exc.status != 404:
            raise
