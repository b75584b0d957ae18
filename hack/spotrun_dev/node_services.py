"""Host services on the real nodes' bridge: CoreDNS, the apiserver's load balancer and
an OCI registry.

- CoreDNS (built from its Go module) answers the cluster's names on the bridge gateway;
  the kubelets give it to pods as their nameserver. PyTorchJob's ``MASTER_ADDR`` is a
  headless Service name, so DNS is what lets two ranks on two nodes find each other.
- There is no kube-proxy, so the `kubernetes` Service's ClusterIP is an address of the
  bridge and socat forwards its :443 to the apiserver, as EKS's endpoint load balancer
  does. In-cluster clients (the operator's pod, the trainers' status patches) use the
  environment the kubelet gives them, unmodified.
- The CNCF distribution registry (built from its Go module) serves plain HTTP on the
  gateway, as ECR serves a cluster's nodes: the nodes' containerd pulls from it through
  its ``hosts.toml`` (node_config.registry_hosts), the host pushes releases to it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import yaml

from spotrun_dev import paths
from spotrun_dev.node_config import (
    API_SERVICE_IP,
    GATEWAY,
    REGISTRY_HOST,
    corefile,
    registry_config,
)
from spotrun_dev.node_host import alive
from spotrun_dev.waiting import ClusterError, wait_for


def _spawn(argv: list[str], log_file: Path, env: dict[str, str] | None = None) -> int:
    with log_file.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    return proc.pid


def _listening(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=1):
        return True


def start_coredns(state_dir: Path, kubeconfig: Path) -> int:
    cfg = state_dir / "Corefile"
    cfg.write_text(corefile(kubeconfig))
    pid = _spawn(
        [str(paths.binary("coredns")), "-conf", str(cfg), "-dns.port", "53"],
        state_dir / "coredns.log",
    )
    wait_for("CoreDNS on the bridge", lambda: _listening(str(GATEWAY), 53), timeout=30)
    return pid


def start_api_lb(state_dir: Path, apiserver_port: int) -> int:
    pid = _spawn(
        [
            "socat",
            f"TCP-LISTEN:443,bind={API_SERVICE_IP},fork,reuseaddr",
            f"TCP:127.0.0.1:{apiserver_port}",
        ],
        state_dir / "api-lb.log",
    )
    wait_for("the apiserver load balancer", lambda: _listening(API_SERVICE_IP, 443), timeout=15)
    return pid


def registry_ready(host: str = REGISTRY_HOST) -> bool:
    """The registry answers its API's base endpoint (``GET /v2/``: 200, no auth)."""
    with urllib.request.urlopen(f"http://{host}/v2/", timeout=2) as r:
        return bool(r.status == 200)


# Repositories the release e2e test makes, one namespace per run (test_real_release.py).
THROWAWAY_REPOSITORIES = "e2e-*"


def start_registry(state_dir: Path, storage: Path, addr: str = REGISTRY_HOST) -> int:
    """The distribution registry on ``addr`` (the gateway), its blobs under ``storage``
    (kept between clusters and clones, so a clean clone pushes only what changed),
    garbage-collected before it serves."""
    storage.mkdir(parents=True, exist_ok=True)
    cfg = state_dir / "registry.yaml"
    cfg.write_text(yaml.safe_dump(registry_config(storage, addr)))
    collect_garbage(cfg, storage, state_dir / "registry-gc.log")
    # No telemetry exporter: nothing here to send traces to (and nothing leaves).
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}
    pid = _spawn(
        [str(paths.binary("registry")), "serve", str(cfg)], state_dir / "registry.log", env
    )
    wait_for(f"the registry on {addr}", lambda: registry_ready(addr), timeout=30)
    if not alive(pid):  # another process answered on the address: not ours to record
        raise ClusterError(f"the registry exited; see {state_dir / 'registry.log'}")
    return pid


def collect_garbage(cfg: Path, storage: Path, log_file: Path) -> None:
    """Drop the release tests' throwaway repositories but the newest, then every blob no
    tag names (the superseded trainer image's ~6 GB among them): ``registry
    garbage-collect`` runs while no registry serves the folder, as distribution's docs
    require. The newest release stays, as a real registry holds the last one: the next
    release's push mounts its gzip-compressed layers instead of compressing GBs again."""
    repos = storage / "docker" / "registry" / "v2" / "repositories"
    throwaway = sorted(repos.glob(THROWAWAY_REPOSITORIES), key=lambda p: p.stat().st_mtime)
    for repo in throwaway[:-1]:
        shutil.rmtree(repo)
    if not repos.is_dir():
        return  # nothing was ever pushed
    argv = [str(paths.binary("registry")), "garbage-collect", "--delete-untagged", str(cfg)]
    with log_file.open("w") as log:
        if subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=False).returncode:
            raise ClusterError(f"the registry's garbage collection failed; see {log_file}")


def stop(pid: int | None) -> None:
    """Stop a service this harness started (its own session: socat's forks go too)."""
    if not pid or not alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    with contextlib.suppress(Exception):
        wait_for(f"pid {pid} to exit", lambda: not alive(pid), timeout=10)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
