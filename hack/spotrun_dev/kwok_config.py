"""The kwokctl configuration of the local cluster: our binaries, RBAC, and kwok Stages.

kwokctl replaces *all* of its default Stages as soon as a config names any, so we load
kwok's own defaults (node initialise + lease heartbeat, pod ready/complete/delete) from
the module cache and change one thing: pods marked by spotrun-dev as having a simulated
container state are left alone by kwok, the way a real kubelet keeps reporting what it
saw (an image that cannot be pulled stays Pending; it is not flipped back to Running).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import yaml

from spotrun_dev import node_config, paths

# The Lease duration of kwok's fake nodes (kubelet and kwok default).
NODE_LEASE_SECONDS: Final = 40

# kwok's workers (its defaults are 4 each). A fake node's Lease is renewed every quarter
# of its duration: 1,500 nodes (bench/operator_scale.py) make 150 renewals a second, and 4
# workers keep up only while a renewal's round trip stays under ~27 ms. On 2 busy cores it
# does not: the renewals fell behind until the node lifecycle controller saw untouched
# nodes' Leases expire and marked them NotReady (1,132 unprovoked node losses in one run).
# More workers make no more requests; they stop a slow apiserver from queueing them.
KWOK_PARALLELISM: Final = {
    "nodeLeaseParallelism": 32,
    "nodePlayStageParallelism": 16,
    "podPlayStageParallelism": 16,
}

# Pods carrying this annotation have a container state written by spotrun-dev acting as
# the kubelet; kwok's pod Stages skip them.
SIMULATED_ANNOTATION = "spotrun.dev/simulated"

_NODE_STAGES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
)
_POD_STAGES = (
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)
# Every pod Stage except deletion gets the exclusion: a deleted pod must still go away.
_EXCLUDE_SIMULATED = {
    "key": f'.metadata.annotations["{SIMULATED_ANNOTATION}"]',
    "operator": "DoesNotExist",
}


def load_stages(kwok_src: Path) -> list[dict[str, Any]]:
    """kwok's default Stages from its module source, with the simulated-pod exclusion."""
    stages: list[dict[str, Any]] = []
    for rel in _NODE_STAGES:
        stages.append(yaml.safe_load((kwok_src / rel).read_text()))
    for rel in _POD_STAGES:
        stage = yaml.safe_load((kwok_src / rel).read_text())
        if stage["metadata"]["name"] != "pod-delete":
            stage["spec"]["selector"]["matchExpressions"].append(dict(_EXCLUDE_SIMULATED))
        stages.append(stage)
    return stages


# The apiserver's audit log records every request of every identity except the control
# plane's own components; RBAC tests read it to prove which verbs spotrun really uses.
AUDIT_POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {
            "level": "None",
            "users": [
                "system:kube-controller-manager",
                "system:kube-scheduler",
                "system:apiserver",
                "kwok-controller",
                "system:kwok-controller",
            ],
        },
        {"level": "None", "userGroups": ["system:nodes"]},
        {"level": "Metadata"},
    ],
}


def build_kwokctl_config(
    bin_dir: Path,
    kube_version: str,
    stages: list[dict[str, Any]],
    audit_policy: Path | None = None,
    pki_dir: Path = Path("pki"),
    node_monitor_grace: str = "60s",
) -> list[dict[str, Any]]:
    """Documents of the ``kwokctl create cluster --config`` file."""
    options: dict[str, Any] = {
        "runtime": "binary",
        "kubeVersion": kube_version,
        "kubeApiserverBinary": str(bin_dir / "kube-apiserver"),
        "kubeControllerManagerBinary": str(bin_dir / "kube-controller-manager"),
        "kubeSchedulerBinary": str(bin_dir / "kube-scheduler"),
        "kubectlBinary": str(bin_dir / "kubectl"),
        "kwokControllerBinary": str(bin_dir / "kwok"),
        "etcdBinary": str(bin_dir / "etcd"),
        "kubeAuthorization": True,
        "kubeAdmission": True,
        "bindAddress": "127.0.0.1",
        "disableQPSLimits": True,
        # kwok renews each fake node's Lease every quarter of its duration. kwokctl's
        # heartbeatFactor (default 5) made that 200 s: a renewal every ~50 s against the
        # node lifecycle controller's 60 s grace, and a node re-created under a lost
        # node's name waited for that renewal (up to ~50 s) before kwok marked it Ready.
        # 40 s is the kubelet's own default (nodeLeaseDurationSeconds) and kwok's; node
        # status updates keep kwokctl's 50 s (5 x 10 s), so a big fleet writes no more.
        "heartbeatFactor": 1,
        "nodeLeaseDurationSeconds": NODE_LEASE_SECONDS,
        "nodeStatusUpdateFrequencyMilliseconds": 50_000,
    }
    options["kubeApiserverCertSANs"] = [node_config.API_SERVICE_IP, str(node_config.GATEWAY)]
    if audit_policy is not None:
        options["kubeAuditPolicy"] = str(audit_policy)
    config = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokctlConfiguration",
        "options": options,
        "componentsPatches": components_patches(pki_dir, node_monitor_grace),
    }
    kwok = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokConfiguration",
        "options": dict(KWOK_PARALLELISM),
    }
    return [config, kwok, *stages]


# One scheduler and one controller manager, each a process nobody restarts: without leader
# election. With it, an apiserver slowed by a burst (a 1,000-run bench on 2 cores) makes a
# lease renewal miss its 10 s deadline, and the component exits ("Leaderelection lost"):
# every pod after that stays Pending, unscheduled, for the rest of the session.
SINGLE_INSTANCE: Final = ({"key": "leader-elect", "value": "false"},)


def components_patches(pki_dir: Path, node_monitor_grace: str) -> list[dict[str, Any]]:
    """The flags kwokctl's binary runtime needs changed for the local cluster."""
    return [
        # The binary runtime hard-codes --manage-all-nodes=true; we need kwok to let go of
        # a node whose "instance" lost its kubelet (spotrun-dev removes the annotation).
        {
            "name": "kwok-controller",
            "extraArgs": [
                {"key": "manage-all-nodes", "value": "false"},
                {
                    "key": "manage-nodes-with-annotation-selector",
                    "value": "kwok.x-k8s.io/node=fake",
                },
            ],
        },
        # A 1 s monitor period lets the node lifecycle controller act at once on a node
        # spotrun-dev marks Unknown. The grace period is 60 s (kwokctl: 200 s), so a real
        # node whose instance died goes NotReady within a minute; Kubernetes' 40 s default
        # is too short here: on a busy 2-core machine kwok's lease heartbeats do miss it,
        # and healthy fake nodes would flap to Unknown.
        {
            "name": "kube-controller-manager",
            "extraArgs": [
                {"key": "node-monitor-period", "value": "1s"},
                {"key": "node-monitor-grace-period", "value": node_monitor_grace},
                *SINGLE_INSTANCE,
            ],
        },
        {"name": "kube-scheduler", "extraArgs": [*SINGLE_INSTANCE]},
        # Real nodes: the apiserver reaches kubelets by their InternalIP with a client
        # certificate their CA trusts (kubectl logs/exec), and the `kubernetes` Service's
        # ClusterIP is one the harness owns on the nodes' bridge (node_config.py).
        {
            "name": "kube-apiserver",
            "extraArgs": [
                {"key": "kubelet-client-certificate", "value": str(pki_dir / "admin.crt")},
                {"key": "kubelet-client-key", "value": str(pki_dir / "admin.key")},
                {"key": "kubelet-preferred-address-types", "value": "InternalIP"},
                {"key": "service-cluster-ip-range", "value": node_config.SERVICE_NET},
            ],
        },
    ]


def render(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def default_config_text() -> str:
    """The config for this checkout's pinned versions and built binaries."""
    v = paths.versions()
    kwok_src = paths.module_dir("sigs.k8s.io/kwok", v["KWOK_VERSION"])
    policy = paths.CLUSTER_DIR / "audit-policy.yaml"
    policy.parent.mkdir(parents=True, exist_ok=True)
    policy.write_text(yaml.safe_dump(AUDIT_POLICY, sort_keys=False))
    return render(
        build_kwokctl_config(
            paths.BIN_DIR,
            v["KUBE_VERSION"],
            load_stages(kwok_src),
            audit_policy=policy,
            pki_dir=paths.KWOK_WORKDIR / "clusters" / "spotrun" / "pki",
        )
    )
