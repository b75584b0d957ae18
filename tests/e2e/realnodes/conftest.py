"""Fixtures of the real-node tests: real kubelets, the real images, the chart's operator pod.

Nothing here plays a component: the operator runs from its image as the chart installs it,
the trainer runs from its image in the pods the operator creates, the kubelets deliver
SIGTERMs and kills, and the trainer writes its own ``status.progress``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from spotrun_dev import chart_install, images, realnodes, storage
from spotrun_dev.cluster import LocalCluster
from spotrun_dev.node_config import RealNode
from spotrun_dev.waiting import ClusterError


@pytest.fixture(scope="session")
def built_images() -> dict[str, images.ImageArchive]:
    """The operator, trainer and pause images, built from the Dockerfiles (cached); the
    same check ``ensure_real_nodes`` uses, so a session makes it once."""
    try:
        return realnodes.built_images()
    except Exception as exc:  # a build that cannot run fails the run, never skips it
        pytest.fail(f"building the images failed: {exc}", pytrace=False)


@pytest.fixture
def real_nodes(
    cluster: LocalCluster, core: client.CoreV1Api, built_images: dict[str, Any]
) -> list[RealNode]:
    """At least 3 Ready real nodes; nodes earlier tests killed are replaced."""
    if cluster.name == "external":
        pytest.fail("the real-node tests drive this machine's own nodes", pytrace=False)
    try:
        return realnodes.ensure_real_nodes(core, max(realnodes.wanted_count(), 3))
    except ClusterError as exc:
        pytest.fail(f"real nodes failed to come up: {exc}", pytrace=False)


@pytest.fixture
def shared_claims(core: client.CoreV1Api, namespace: str) -> Iterator[dict[str, Path]]:
    """RWX claims on folders every real node mounts (EFS/FSx stand-ins): the interrupted
    run's ``ckpt`` and the reference run's ``ckpt-ref``; maps claim -> host folder."""
    pvs = {
        name: storage.ensure_checkpoint_claim(core, namespace, name)
        for name in ("ckpt", "ckpt-ref")
    }
    yield {name: storage.host_path(namespace, name) for name in pvs}
    for pv in pvs.values():
        storage.delete_volume(core, pv)


@pytest.fixture
def operator_args() -> tuple[str, ...]:
    """Operator flags beyond chart_install.FAST_ARGS (a test module overrides this)."""
    return ()


@pytest.fixture
def chart_values() -> tuple[str, ...]:
    """``--set`` arguments of the chart beyond chart_install's (a test module overrides
    this): values that also change the operator's RBAC."""
    return ()


@pytest.fixture
def operator_release(
    core: client.CoreV1Api,
    namespace: str,
    crd: dict[str, Any],
    built_images: dict[str, images.ImageArchive],
    real_nodes: list[RealNode],
    operator_args: tuple[str, ...],
    chart_values: tuple[str, ...],
    request: pytest.FixtureRequest,
) -> Iterator[chart_install.Release]:
    """``helm install`` of the chart: the operator is a pod from its image on a real node,
    under the chart's ServiceAccount and RBAC, with in-cluster config."""
    release = chart_install.install_operator(
        core,
        namespace,
        built_images["operator"].ref,
        chart_args=chart_values,
        extra_args=operator_args,
    )
    yield release
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        sys.stderr.write(f"\n--- operator pod log ---\n{release.log(core, 300)}\n")
    chart_install.uninstall(release)
