"""Pure builders of a real local node: addresses, containerd/kubelet/CNI configs, labels.

A real node is a "test host": its own network namespace with one veth on the harness's
bridge, its own mount namespace (so its `/var/lib/kubelet/device-plugins`, `/run/containerd`
and CNI state are its own, as on a separate machine), and one containerd + one kubelet +
the fake-GPU device plugin inside. Settings that this VM needs and why are in
docs/real-nodes.md; the ones that matter most are repeated next to the values below.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from spotrun_dev import fleet, paths

BRIDGE: Final = "spotrun0"
# The harness's own networks; nothing outside them is ever a target.
NODE_NET: Final = ipaddress.IPv4Network("10.250.0.0/24")
# The bridge's own MAC address (locally administered). Left unset, a Linux bridge takes the
# lowest MAC of its ports and changes it whenever a port comes or goes
# (net/bridge/br_stp_if.c, br_stp_recalculate_bridge_id; it stops doing so once the address
# is set: addr_assign_type NET_ADDR_SET). Every node replacement then moved the gateway's
# MAC under the other nodes' ARP caches, and their pods lost the apiserver for seconds.
BRIDGE_MAC: Final = "02:73:70:6f:74:00"
GATEWAY: Final = ipaddress.IPv4Address("10.250.0.1")  # the host: CoreDNS, apiserver LB, registry
# The CNCF distribution registry (plain HTTP) on the gateway: the nodes' containerd pulls
# from it through its hosts.toml, the host pushes to it (the release e2e).
REGISTRY_PORT: Final = 5000
REGISTRY_HOST: Final = f"{GATEWAY}:{REGISTRY_PORT}"
CERTS_DIR: Final = "certs.d"  # containerd's config_path under a node's state folder
POD_NET: Final = ipaddress.IPv4Network("10.244.0.0/16")
SERVICE_NET: Final = "10.96.0.0/16"
# The `kubernetes` Service's ClusterIP (first address of SERVICE_NET). There is no
# kube-proxy, so the harness owns this address on its bridge and forwards :443 to the
# apiserver: in-cluster clients (the operator's and trainers' pods) work unmodified.
API_SERVICE_IP: Final = "10.96.0.1"
CLUSTER_DOMAIN: Final = "cluster.local"
GPU_TAINT_KEY: Final = fleet.GPU_RESOURCE
REAL_NODE_LABEL: Final = "spotrun.dev/real-node"
# "false" on a node started without the project's images (role "bare").
PRELOADED_LABEL: Final = "spotrun.dev/preloaded-images"
# Real nodes carry this taint besides the spot group's own, so the kwok-fleet tests' pods
# (which never execute and name images no node has) never land on them.
REAL_NODE_TAINT: Final = {"key": REAL_NODE_LABEL, "value": "true", "effect": "NoSchedule"}
SHUTDOWN_GRACE_SECONDS: Final = 45
SHUTDOWN_CRITICAL_SECONDS: Final = 15
FIRST_HOST: Final = 10  # node slot s has address NODE_NET[FIRST_HOST + s]
MAX_SLOTS: Final = 200


@dataclass(frozen=True)
class RealNode:
    """One real node: its name, slot (addresses), zone and role.

    ``spot`` nodes are the p4d spot group trainers run on; a ``system`` node is the
    on-demand node group a cluster keeps for controllers (the operator's pod), as the
    chart's nodeSelector advice says: never put the operator on the nodes being reclaimed.
    A ``bare`` node is a system-group node started without the project's images (only the
    sandbox image): what it runs, it pulls from a registry, as a fresh EKS node does.
    """

    name: str
    slot: int
    zone: str
    role: str = "spot"

    def __post_init__(self) -> None:
        if not 0 <= self.slot < MAX_SLOTS:
            raise ValueError(f"slot must be in [0, {MAX_SLOTS}), got {self.slot}")

    @property
    def ip(self) -> str:
        return str(NODE_NET[FIRST_HOST + self.slot])

    @property
    def pod_cidr(self) -> str:
        return str(list(POD_NET.subnets(new_prefix=24))[self.slot + 1])

    @property
    def netns(self) -> str:
        return f"spotrun-{self.name}"

    @property
    def host_veth(self) -> str:
        # Interface names are at most 15 characters.
        return f"srn{self.slot}"

    @property
    def cgroup_root(self) -> str:
        """The kubelet's cgroupRoot: every pod of this node lives below it."""
        return f"/spotrun-{self.name}"

    @property
    def system_cgroup(self) -> str:
        """containerd, its shims, the kubelet and the plugin: the node's "system" processes."""
        return f"/spotrun-{self.name}-system"


SYSTEM_INSTANCE_TYPE: Final = "m5.xlarge"


def node_labels(node: RealNode, region: str) -> dict[str, str]:
    """The labels of an EKS managed node group's node: the spot p4d.24xlarge group (the one
    cluster.yaml makes) or the on-demand system group.

    Real nodes carry only the managed node group's capacity label: a node never has both
    `eks.amazonaws.com/capacityType` and Karpenter's `karpenter.sh/capacity-type`.
    """
    common = {
        "topology.kubernetes.io/zone": node.zone,
        "topology.kubernetes.io/region": region,
        REAL_NODE_LABEL: "true",
    }
    if node.role in ("system", "bare"):
        return {
            "node.kubernetes.io/instance-type": SYSTEM_INSTANCE_TYPE,
            "eks.amazonaws.com/capacityType": "ON_DEMAND",
            "eks.amazonaws.com/nodegroup": "system",
            **({PRELOADED_LABEL: "false"} if node.role == "bare" else {}),
            **common,
        }
    return {
        "node.kubernetes.io/instance-type": fleet.INSTANCE_TYPE,
        "eks.amazonaws.com/capacityType": "SPOT",
        "eks.amazonaws.com/nodegroup": "p4d-spot",
        "nvidia.com/gpu.present": "true",
        **common,
    }


def node_taints(node: RealNode) -> list[dict[str, str]]:
    if node.role in ("system", "bare"):
        return [dict(REAL_NODE_TAINT)]
    return [dict(fleet.GPU_TAINT), dict(REAL_NODE_TAINT)]


def taint_flag(taints: list[dict[str, str]]) -> str:
    """--register-with-taints value: key=value:Effect,..."""
    return ",".join(f"{t['key']}={t['value']}:{t['effect']}" for t in taints)


# Layers a node's containerd unpacks at once: this machine's 2 cores (each layer's
# decompression, digest and write is one thread). A 6.4 GB pull of the trainer's five
# dependency layers: 24 s one at a time, 16 s two at once, 19 s three (docs/images.md).
UNPACKS: Final = 2


def containerd_config(state: Path, pause_ref: str, shim: Path | None = None, lazy: str = "") -> str:
    """containerd 2 config (version 3), everything under the node's state folder, as EKS
    AL2023's nodeadm writes it (internal/containerd/config2.template.toml) plus its
    ``FastImagePull`` gate's parallel unpacking (SOCI's ``parallel_pull_unpack`` there,
    containerd's transfer service here). Layer blobs are kept: ``discard_unpacked_layers``
    sends the CRI to its sequential local pull (internal/cri/config
    CheckLocalImagePullConfigs). The runc shim is named by path (Debian's may be on PATH).
    ``lazy`` (node_lazy.containerd_section) is added for a node that pulls lazily."""
    shim = paths.binary("containerd-shim-runc-v2") if shim is None else shim
    images = 'plugins."io.containerd.cri.v1.images"'  # TOML table names of the CRI plugins
    runtime = 'plugins."io.containerd.cri.v1.runtime"'
    # A remote snapshotter finds a layer's registry in the CRI's snapshot labels.
    snap = '"stargz"\n  disable_snapshot_annotations = false' if lazy else '"overlayfs"'
    return f"""version = 3
root = "{state}/containerd/root"
state = "{state}/containerd/state"
[grpc]
  address = "{state}/containerd.sock"
[ttrpc]
  address = "{state}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[{images}]
  snapshotter = {snap}
[{images}.pinned_images]
  sandbox = "{pause_ref}"
# Per-registry hosts.toml files (containerd docs/hosts.md): the harness's plain-HTTP
# registry is {REGISTRY_HOST}/hosts.toml here.
[{images}.registry]
  config_path = "{state}/{CERTS_DIR}"
[plugins."io.containerd.transfer.v1.local"]
  max_concurrent_unpacks = {UNPACKS}
[{runtime}]
  # Mandatory on this VM: root lacks CAP_SYS_RESOURCE, and without this every sandbox
  # fails with "can't get final child's PID from pipe: EOF" (oom_score_adj -998 refused).
  restrict_oom_score_adj = true
[{runtime}.containerd]
  default_runtime_name = "runc"
[{runtime}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  runtime_path = "{shim}"
[{runtime}.containerd.runtimes.runc.options]
  SystemdCgroup = false
[{runtime}.cni]
  bin_dirs = ["/usr/lib/cni"]
  conf_dir = "{state}/cni"
{lazy}"""


def registry_hosts(host: str = REGISTRY_HOST) -> str:
    """containerd's hosts.toml for a plain-HTTP registry: an ``http://`` server is spoken to
    without TLS (no skip_verify needed); pulls and resolves only."""
    return f"""server = "http://{host}"

[host."http://{host}"]
  capabilities = ["pull", "resolve"]
"""


# The registry namespace of the images built here (``localhost/spotrun/...``): a node that
# does not hold one pulls it from the harness's registry (example_images.py pushes them
# there), as an EKS node pulls from ECR what its AMI does not hold.
LOCAL_IMAGES_NAMESPACE: Final = "localhost"


def registry_hosts_dirs() -> dict[str, str]:
    """A node's ``certs.d`` folders and their hosts.toml: the registry under its own address,
    and the same registry as the server of the ``localhost`` namespace."""
    return {REGISTRY_HOST: registry_hosts(), LOCAL_IMAGES_NAMESPACE: registry_hosts()}


def config_key(pause_ref: str) -> str:
    """What a node's containerd started from besides its images (its config and the
    registry hosts): a node with another key is replaced, as one with older images is."""
    hosts = registry_hosts_dirs()
    text = containerd_config(Path("/state"), pause_ref, shim=Path("/shim"))
    text += paths.versions()["CONTAINERD_VERSION"]
    text += "".join(f"{name}\n{hosts[name]}" for name in sorted(hosts))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cni_config(node: RealNode) -> dict[str, Any]:
    """A bridge inside the node's namespace with the node's pod range; routes between
    nodes' pod ranges are set in each node namespace (no masquerade, no host forwarding)."""
    return {
        "cniVersion": "0.4.0",
        "name": "spotrun-pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": node.pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_argv(
    node: RealNode, state: Path, region: str, taints: Sequence[Mapping[str, str]]
) -> list[str]:
    """The kubelet's command line: its files under the node's state folder, the node's
    labels and its role's taints plus ``taints``, an EC2-shaped provider id."""
    labels = ",".join(f"{k}={v}" for k, v in node_labels(node, region).items())
    return [
        str(paths.binary("kubelet")),
        f"--config={state / 'kubelet.yaml'}",
        f"--kubeconfig={state / 'kubeconfig'}",
        f"--root-dir={state / 'kubelet'}",
        f"--cert-dir={state / 'kubelet-pki'}",
        f"--hostname-override={node.name}",
        f"--node-ip={node.ip}",
        f"--node-labels={labels}",
        f"--register-with-taints={taint_flag(node_taints(node) + [dict(t) for t in taints])}",
        f"--provider-id=aws:///{node.zone}/i-real{node.slot:013d}",
        "--v=1",
    ]


def kubelet_config(node: RealNode, state: Path, ca_file: Path, port: int) -> dict[str, Any]:
    """KubeletConfiguration that works on this VM (cgroup v1 host, no CAP_SYS_RESOURCE).

    Graceful node shutdown is configured as on EKS AL2023 nodes (kubelet's own
    nodeshutdown manager, driven by logind's PrepareForShutdown signal).
    """
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # 1.35+ refuses cgroup v1 unless told (containerd 2 still runs on it, deprecated).
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root,
        "containerRuntimeEndpoint": f"unix://{state}/containerd.sock",
        "address": node.ip,  # the kubelet refuses a loopback node IP
        "port": port,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 0,
        "readOnlyPort": 0,
        "podLogsDir": f"{state}/pod-logs",
        "failSwapOn": False,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "imageGCHighThresholdPercent": 100,  # never GC the hand-imported images
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {},
        "nodeStatusUpdateFrequency": "2s",
        "clusterDNS": [str(GATEWAY)],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": f"{state}/resolv.conf",
        # Graceful node shutdown as EKS AL2023 configures it; regular pods get
        # shutdownGracePeriod - shutdownGracePeriodCriticalPods (or their own, if shorter).
        "shutdownGracePeriod": f"{SHUTDOWN_GRACE_SECONDS}s",
        "shutdownGracePeriodCriticalPods": f"{SHUTDOWN_CRITICAL_SECONDS}s",
        "serializeImagePulls": False,
        "maxPods": 20,
    }


def kubeconfig(server: str, ca_file: Path, cert: Path, key: Path, user: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "local", "cluster": {"server": server, "certificate-authority": str(ca_file)}}
        ],
        "users": [
            {"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}
        ],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    }


def registry_config(storage: Path, addr: str = REGISTRY_HOST) -> dict[str, Any]:
    """The distribution registry's configuration: plain HTTP on the gateway, blobs under
    ``storage``, deletes allowed (a test may clean up; garbage collection)."""
    return {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text"},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
        },
        "http": {"addr": addr, "headers": {"X-Content-Type-Options": ["nosniff"]}},
    }


def corefile(kubeconfig_path: Path) -> str:
    """CoreDNS on the bridge gateway: cluster names only (no upstream: nothing leaves)."""
    return f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 {{
    bind {GATEWAY}
    errors
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa {{
        kubeconfig {kubeconfig_path}
        pods insecure
        ttl 5
    }}
}}
.:53 {{
    bind {GATEWAY}
    errors
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


def dbus_config() -> str:
    """The node's system bus: root only (every process on a node is root here)."""
    return """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=/run/dbus/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="root"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


def free_slot(used: set[int]) -> int:
    for slot in range(MAX_SLOTS):
        if slot not in used:
            return slot
    raise ValueError("no free real-node slot")
