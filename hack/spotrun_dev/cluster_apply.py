"""Small pieces the host-process components of the local cluster share (the training
operator, Kueue): server-side apply, CRD establishment, loopback ports, process groups."""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any

from kubernetes import client
from kubernetes.dynamic import DynamicClient

from spotrun_dev import node_host
from spotrun_dev.waiting import wait_for


def apply_manifests(api: client.ApiClient, docs: list[dict[str, Any]]) -> None:
    """Server-side apply of plain manifests through the dynamic client."""
    dyn = DynamicClient(api)
    for doc in docs:
        res = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        res.server_side_apply(
            body=doc,
            name=doc["metadata"]["name"],
            namespace=doc["metadata"].get("namespace"),
            field_manager="spotrun-dev",
            force_conflicts=True,
        )


def wait_established(api: client.ApiClient, crd_name: str, timeout: float = 60) -> None:
    ext = client.ApiextensionsV1Api(api)

    def established() -> bool:
        conds = ext.read_custom_resource_definition(crd_name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conds)

    wait_for(f"the CRD {crd_name} to be established", established, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int | None) -> bool:
    return node_host.alive(pid)


def stop_group(pid: int | None, timeout: float = 10) -> None:
    """SIGTERM the process group this component was started in, SIGKILL after ``timeout``."""
    if not pid or not pid_alive(pid):
        return
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_alive(pid):
        os.killpg(pid, signal.SIGKILL)
