"""Install the spotrun chart with helm so the operator runs as a pod on a real node.

The production install path: the chart's Deployment, ServiceAccount and RBAC as shipped,
the locally built operator image (``imagePullPolicy: Never``: nodes have it, nothing is
pulled) or, for a released chart, the image its registry serves (pulled by the node),
in-cluster config from the environment the kubelet gives the pod.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kubernetes import client
from kubernetes.client.rest import ApiException

from spotrun_dev import paths
from spotrun_dev.node_config import REAL_NODE_LABEL
from spotrun_dev.waiting import ClusterError, wait_for

CHART = paths.REPO_ROOT / "charts" / "spotrun"
POD_SELECTOR = "app.kubernetes.io/name=spotrun"
# Quicker recoveries for a demo/test (the defaults suit production): backoff from 1 s,
# a 5 s resync, prices from the built-in table (no AWS endpoint here).
FAST_ARGS = (
    "--pricing=table",
    "--backoff-base-seconds=1",
    "--backoff-jitter=0",
    "--resync-seconds=5",
)


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str

    @property
    def fullname(self) -> str:
        """The chart's ``fullnameOverride`` (its Deployment and Lease are named so):
        release and namespace, so cluster-scoped names of two installs never collide."""
        return f"{self.name}-{self.namespace}"

    def pods(self, core: client.CoreV1Api) -> list[client.V1Pod]:
        """The operator's pods not being deleted (two with ``replicas: 2``)."""
        pods = core.list_namespaced_pod(self.namespace, label_selector=POD_SELECTOR).items
        return [p for p in pods if not p.metadata.deletion_timestamp]

    def pod(self, core: client.CoreV1Api) -> client.V1Pod | None:
        live = self.pods(core)
        return live[0] if live else None

    def leader(self, api: client.ApiClient) -> str | None:
        """The pod holding the chart's Lease (its holderIdentity is ``<pod>_<uuid>``)."""
        try:
            lease = client.CoordinationV1Api(api).read_namespaced_lease(
                self.fullname, self.namespace
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        holder = str(lease.spec.holder_identity or "")
        return holder.rpartition("_")[0] or None

    def restarts(self, core: client.CoreV1Api) -> int:
        """How often the kubelet restarted the operator's container (0: no live pod)."""
        pod = self.pod(core)
        statuses = (pod.status.container_statuses or []) if pod and pod.status else []
        return sum(int(c.restart_count or 0) for c in statuses)

    def log(self, core: client.CoreV1Api, lines: int = 100) -> str:
        pod = self.pod(core)
        if pod is None:
            return "(no operator pod)"
        try:
            return str(
                core.read_namespaced_pod_log(pod.metadata.name, self.namespace, tail_lines=lines)
            )
        except ApiException as exc:
            return f"(log unavailable: {exc.status} {exc.reason})"


def helm(*args: str, timeout: float = 300) -> str:
    cmd = [str(paths.binary("helm")), "--kubeconfig", str(paths.KUBECONFIG), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise ClusterError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def _escaped(key: str) -> str:
    """A label key as one ``--set`` path element (helm splits paths at dots)."""
    return key.replace(".", "\\.")


# The chart's values for an operator that trains through spot notices (operator.spotNotice:
# trainThrough): the flag and the RBAC for each run's PodDisruptionBudget.
TRAIN_THROUGH_NOTICE: tuple[str, ...] = ("--set=operator.spotNotice=trainThrough",)


def install_operator(
    core: client.CoreV1Api,
    namespace: str,
    image: str,
    release: str = "spotrun",
    *,
    chart: str = str(CHART),
    chart_args: Sequence[str] = (),
    pull_policy: str = "Never",
    replicas: int = 1,
    node_selector: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> Release:
    """helm install (or upgrade) the chart watching ``namespace``; wait for the pod.

    ``chart`` is the repository's chart folder by default, or a released one
    (``oci://<registry>/spotrun/charts/spotrun`` with ``chart_args`` such as ``--version``
    and ``--plain-http``); ``pull_policy`` Never runs the image the nodes were seeded with,
    IfNotPresent lets their containerd pull it; ``replicas: 2`` runs a leader and a
    standby; ``node_selector`` adds to the system group's selector; ``extra_args`` go to
    the operator after ``FAST_ARGS``."""
    rel = Release(release, namespace)
    repo, _, tag = image.rpartition(":")
    escaped = _escaped(REAL_NODE_LABEL)
    sets = [
        f"--set=fullnameOverride={rel.fullname}",
        f"--set=image.repository={repo}",
        f"--set=image.tag={tag}",
        f"--set=image.pullPolicy={pull_policy}",
        f"--set=replicas={replicas}",
        "--set=watch.mode=namespaced",
        f"--set=watch.namespaces[0]={namespace}",
        # The on-demand system node group, never the spot nodes being reclaimed.
        f"--set-string=nodeSelector.{escaped}=true",
        "--set-string=nodeSelector.eks\\.amazonaws\\.com/capacityType=ON_DEMAND",
        *(f"--set-string=nodeSelector.{_escaped(k)}={v}" for k, v in (node_selector or {}).items()),
        f"--set=tolerations[0].key={REAL_NODE_LABEL}",
        "--set=tolerations[0].operator=Exists",
    ]
    args = (*FAST_ARGS, *extra_args)
    sets += [f"--set=operator.extraArgs[{i}]={a}" for i, a in enumerate(args)]
    helm(
        "upgrade", "--install", release, chart, *chart_args,
        "-n", namespace, "--take-ownership", *sets,
    )  # fmt: skip

    def ready() -> bool:
        pods = rel.pods(core)
        statuses = [c for p in pods for c in (p.status.container_statuses or [])]
        return len(pods) == replicas and bool(statuses) and all(c.ready for c in statuses)

    wait_for(f"{replicas} operator pod(s) Ready on a real node", ready, timeout=180, interval=1)
    return rel


def uninstall(release: Release) -> None:
    helm("uninstall", release.name, "-n", release.namespace, "--wait", "--timeout", "120s")
