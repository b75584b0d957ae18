"""The pure builders of real nodes: addresses, labels, taints and daemon configs."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path

import pytest

from spotrun_dev import fleet, kwok_config, node_config
from spotrun_dev.node_config import RealNode


def test_every_slot_gets_its_own_address_and_pod_range_inside_the_harness_networks() -> None:
    nodes = [RealNode(f"n{i}", i, "us-east-1a") for i in range(node_config.MAX_SLOTS)]
    ips = {n.ip for n in nodes}
    ranges = {n.pod_cidr for n in nodes}
    assert len(ips) == len(ranges) == len(nodes)
    for n in nodes:
        assert ipaddress.ip_address(n.ip) in node_config.NODE_NET
        assert ipaddress.ip_address(n.ip) != node_config.GATEWAY
        assert ipaddress.IPv4Network(n.pod_cidr).subnet_of(node_config.POD_NET)
        assert len(n.host_veth) <= 15  # the kernel's limit on interface names
    with pytest.raises(ValueError, match="slot"):
        RealNode("x", node_config.MAX_SLOTS, "us-east-1a")


def test_spot_nodes_look_like_the_managed_p4d_spot_group() -> None:
    node = RealNode("real-spot-0", 0, "us-east-1b")
    labels = node_config.node_labels(node, "us-east-1")
    assert labels["eks.amazonaws.com/capacityType"] == "SPOT"
    assert labels["node.kubernetes.io/instance-type"] == fleet.INSTANCE_TYPE
    assert labels["topology.kubernetes.io/zone"] == "us-east-1b"
    # A managed node group's node never carries Karpenter's capacity label as well.
    assert "karpenter.sh/capacity-type" not in labels
    flag = node_config.taint_flag(node_config.node_taints(node))
    assert flag == "nvidia.com/gpu=present:NoSchedule,spotrun.dev/real-node=true:NoSchedule"


def test_the_system_node_is_on_demand_without_gpus() -> None:
    node = RealNode("real-system-0", 3, "us-east-1a", role="system")
    labels = node_config.node_labels(node, "us-east-1")
    assert labels["eks.amazonaws.com/capacityType"] == "ON_DEMAND"
    assert "nvidia.com/gpu.present" not in labels
    keys = [t["key"] for t in node_config.node_taints(node)]
    assert keys == [node_config.REAL_NODE_LABEL]


def test_daemon_configs_carry_what_this_vm_needs(tmp_path: Path) -> None:
    node = RealNode("real-spot-1", 1, "us-east-1a")
    text = node_config.containerd_config(tmp_path, "localhost/spotrun/pause:x", Path("/s/shim"))
    containerd = tomllib.loads(text)
    assert containerd["version"] == 3  # containerd 2's format: plugins by their 2.x ids
    assert containerd["grpc"]["address"] == f"{tmp_path}/containerd.sock"
    runtime = containerd["plugins"]["io.containerd.cri.v1.runtime"]
    assert runtime["restrict_oom_score_adj"] is True
    runc = runtime["containerd"]["runtimes"]["runc"]
    assert runc["runtime_path"] == "/s/shim"  # not Debian's shim on PATH
    assert runc["options"] == {"SystemdCgroup": False}  # the kubelet's cgroupfs driver
    images = containerd["plugins"]["io.containerd.cri.v1.images"]
    assert images["pinned_images"] == {"sandbox": "localhost/spotrun/pause:x"}
    # Layers unpacked side by side (EKS's FastImagePull), which the CRI does only through
    # the transfer service, which it uses only while layer blobs are kept.
    assert containerd["plugins"]["io.containerd.transfer.v1.local"]["max_concurrent_unpacks"] > 1
    assert images.get("discard_unpacked_layers", False) is False
    kubelet = node_config.kubelet_config(node, tmp_path, tmp_path / "ca.crt", 10250)
    assert (kubelet["failCgroupV1"], kubelet["cgroupDriver"]) == (False, "cgroupfs")
    assert kubelet["address"] == node.ip and kubelet["cgroupRoot"] == node.cgroup_root
    assert kubelet["clusterDNS"] == [str(node_config.GATEWAY)]
    assert int(kubelet["shutdownGracePeriod"].rstrip("s")) > int(
        kubelet["shutdownGracePeriodCriticalPods"].rstrip("s")
    )
    cni = node_config.cni_config(node)
    assert cni["plugins"][0]["ipam"]["ranges"] == [[{"subnet": node.pod_cidr}]]
    assert cni["plugins"][0]["ipMasq"] is False  # nothing is masqueraded off the machine


def test_the_apiserver_serves_the_in_cluster_address_real_pods_use(tmp_path: Path) -> None:
    docs = kwok_config.build_kwokctl_config(tmp_path, "v1.36.3", [], pki_dir=tmp_path)
    options = docs[0]["options"]
    assert node_config.API_SERVICE_IP in options["kubeApiserverCertSANs"]
    patch = next(p for p in docs[0]["componentsPatches"] if p["name"] == "kube-apiserver")
    args = {a["key"]: a["value"] for a in patch["extraArgs"]}
    assert args["service-cluster-ip-range"] == node_config.SERVICE_NET
    first = next(ipaddress.ip_network(node_config.SERVICE_NET).hosts())
    assert str(first) == node_config.API_SERVICE_IP  # the `kubernetes` Service's ClusterIP
    assert args["kubelet-preferred-address-types"] == "InternalIP"


def test_containerd_pulls_from_the_harness_registry_over_plain_http(tmp_path: Path) -> None:
    """containerd reads per-registry hosts.toml files under config_path; the harness's
    registry is on the bridge's gateway (inside the harness's network) and speaks HTTP."""
    containerd = tomllib.loads(node_config.containerd_config(tmp_path, "p"))
    cri = containerd["plugins"]["io.containerd.cri.v1.images"]
    assert cri["registry"]["config_path"] == str(tmp_path / node_config.CERTS_DIR)
    host = node_config.REGISTRY_HOST
    assert host == f"{node_config.GATEWAY}:{node_config.REGISTRY_PORT}"
    assert ipaddress.IPv4Address(host.split(":")[0]) in node_config.NODE_NET
    hosts = tomllib.loads(node_config.registry_hosts())
    assert hosts["server"] == f"http://{host}"
    assert hosts["host"][f"http://{host}"] == {"capabilities": ["pull", "resolve"]}
    registry = node_config.registry_config(tmp_path / "blobs")
    assert registry["http"] == {
        "addr": host,
        "headers": {"X-Content-Type-Options": ["nosniff"]},
    }
    assert "tls" not in registry["http"]
    assert registry["storage"]["filesystem"] == {"rootdirectory": str(tmp_path / "blobs")}


def test_a_node_config_change_changes_the_key_nodes_are_replaced_on() -> None:
    key = node_config.config_key("localhost/spotrun/pause:a")
    assert key == node_config.config_key("localhost/spotrun/pause:a")
    assert key != node_config.config_key("localhost/spotrun/pause:b")
