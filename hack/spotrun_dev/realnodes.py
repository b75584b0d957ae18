"""Real nodes next to the kwok fleet: a containerd + kubelet + GPU plugin per test host.

``ensure_real_nodes`` keeps ``REAL_NODES`` (default 3) healthy real nodes; ``kill_instance``
makes one vanish as an EC2 instance does (network first, then every process SIGKILLed);
``cloud_delete`` removes a dead node's Node object as the cloud controller manager does,
and ``ensure_real_nodes`` then starts a replacement with a new name, as the ASG would.
Everything a node made (namespaces, veth, cgroups, mounts, processes) goes with
``remove_node``; ``down`` removes the bridge and the host services too (CoreDNS, the
apiserver's load balancer, the registry on ``REGISTRY_HOST``; its blobs stay in .cache).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from spotrun_dev import (
    images,
    node_certs,
    node_host,
    node_images,
    node_lazy,
    node_services,
    paths,
)
from spotrun_dev.fleet_state import leftover_pods
from spotrun_dev.node_config import (
    API_SERVICE_IP,
    CERTS_DIR,
    SHUTDOWN_GRACE_SECONDS,
    RealNode,
    cni_config,
    config_key,
    containerd_config,
    dbus_config,
    free_slot,
    kubeconfig,
    kubelet_argv,
    kubelet_config,
    registry_hosts_dirs,
)
from spotrun_dev.waiting import ClusterError, wait_for

log = logging.getLogger("spotrun_dev.realnodes")

STATE_DIR = paths.CACHE_DIR / "nodes"
STATE_FILE = STATE_DIR / "fleet.json"
NAME_PREFIX = "real-spot-"
SYSTEM_PREFIX = "real-system-"
REAL_PREFIX = "real-"  # every real node's name starts with this
ZONES = ("us-east-1a", "us-east-1b", "us-east-1c")
REGION = "us-east-1"
PKI_DIR = paths.KWOK_WORKDIR / "clusters" / "spotrun" / "pki"
# The local registry's blobs: machine-wide beside the image archives, so a clean clone's
# cluster finds the trainer image's 6 GB already pushed (node_services.collect_garbage
# bounds it).
REGISTRY_STORAGE = images.cache_dir() / "registry"


SYSTEM_NODES = 1  # one on-demand node for the operator's pod


def wanted_count() -> int:
    """Real spot nodes wanted (REAL_NODES, default 3); the system node comes on top."""
    return int(os.environ.get("REAL_NODES", "3"))


@dataclass
class NodeRecord:
    slot: int
    zone: str
    pids: dict[str, int] = field(default_factory=dict)
    images: str = ""  # the golden key (image set) the node's containerd started from
    role: str = "spot"
    config: str = ""  # node_config.config_key: its containerd config and registry hosts
    cut: bool = False  # its network was cut (real_partition): lost to the group

    def node(self, name: str) -> RealNode:
        return RealNode(name=name, slot=self.slot, zone=self.zone, role=self.role)


@dataclass
class FleetState:
    next_index: int = 0
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    services: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls) -> FleetState:
        try:
            raw = json.loads(STATE_FILE.read_text())
        except (OSError, ValueError):
            return cls()
        nodes = {k: NodeRecord(**v) for k, v in raw.get("nodes", {}).items()}
        return cls(raw.get("next_index", 0), nodes, raw.get("services", {}))

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        STATE_FILE.write_text(json.dumps(asdict(self), indent=2))

    def real_nodes(self) -> list[RealNode]:
        return [r.node(n) for n, r in self.nodes.items()]

    def count(self, role: str) -> int:
        return sum(1 for r in self.nodes.values() if r.role == role)


def _apiserver_port() -> int:
    cfg = yaml.safe_load(paths.KUBECONFIG.read_text())
    server = cfg["clusters"][0]["cluster"]["server"]
    port = urllib.parse.urlparse(str(server)).port
    if port is None:
        raise ClusterError(f"no port in the apiserver URL {server}")
    return port


def _ensure_services(state: FleetState) -> None:
    node_host.ensure_bridge()
    svc_dir = STATE_DIR / "services"
    svc_dir.mkdir(parents=True, exist_ok=True)
    if not node_host.alive(state.services.get("apiLb")):
        state.services["apiLb"] = node_services.start_api_lb(svc_dir, _apiserver_port())
    if not node_host.alive(state.services.get("coredns")):
        state.services["coredns"] = node_services.start_coredns(svc_dir, paths.KUBECONFIG)
    if not node_host.alive(state.services.get("registry")):
        state.services["registry"] = node_services.start_registry(svc_dir, REGISTRY_STORAGE)
    state.save()


def healthy(record: NodeRecord) -> bool:
    """Every process of the instance runs (a killed instance has none) and its network was
    not cut (a partitioned instance is lost to the group, though its processes live)."""
    return not record.cut and all(
        node_host.alive(record.pids.get(k)) for k in ("holder", "containerd", "kubelet")
    )


def ensure_real_nodes(core: client.CoreV1Api, count: int | None = None) -> list[RealNode]:
    """``count`` healthy, Ready real nodes; dead ones are removed and replaced."""
    count = wanted_count() if count is None else count
    state = FleetState.load()
    _ensure_services(state)
    built = built_images()
    key = node_images.golden_key(list(built.values()))
    config = config_key(built["pause"].ref)
    for name, record in list(state.nodes.items()):
        if not healthy(record):
            log.info("real node %s is dead: removing it", name)
            remove_node(core, state, name)
        elif record.role == "bare":
            continue  # started by a test without images; it removes it (bare_nodes.py)
        elif record.images != key or record.config != config:
            # An AMI update: nodes with older images or an older containerd config (its
            # registry hosts) are replaced, not patched.
            log.info("real node %s has older images or config: replacing it", name)
            remove_node(core, state, name)
    wanted = {"spot": count, "system": SYSTEM_NODES}
    if any(state.count(role) < n for role, n in wanted.items()):
        golden = node_images.golden_root(list(built.values()))
        for role, n in wanted.items():
            while state.count(role) < n:
                record = add_node(core, state, golden, built["pause"].ref, role)
                record.images, record.config = key, config
                state.save()
    nodes = state.real_nodes()
    wait_for("every real node to be Ready", lambda: all_ready(core, nodes), timeout=120)
    # An earlier test's pods, stopping gracefully after its namespace was deleted, still
    # hold GPUs and the 2 cores: a gang started beside them would be placed and timed by
    # them (after a failed story, its pods are deleted only as the test ends).
    wait_for(
        "pods of namespaces being deleted to leave the real nodes",
        lambda: not leftover_pods(core, {n.name for n in nodes}),
        timeout=180,
    )
    return [n for n in nodes if n.role == "spot"]


def _name_index(name: str) -> tuple[int, str]:
    """Creation order: add_node's index (``real-spot-100`` after ``-99``); others last."""
    tail = name.rsplit("-", 1)[-1]
    return (int(tail) if tail.isdigit() else 1 << 62, name)


def exactly_spot_nodes(core: client.CoreV1Api, wanted: int) -> list[RealNode]:
    """Exactly ``wanted`` healthy real spot nodes: those beyond it removed (newest names
    last), missing ones started (a case that must have no spare capacity)."""
    state = FleetState.load()
    spot = sorted((n for n, r in state.nodes.items() if r.role == "spot"), key=_name_index)
    for name in spot[wanted:]:
        remove_node(core, state, name)
    return ensure_real_nodes(core, wanted)


@functools.cache
def built_images() -> dict[str, images.ImageArchive]:
    """The images, built or found once per process: a check costs ~10 s, and every
    real-node test (``ensure_real_nodes``) and every node a provisioner adds asked again.
    Callers must not change the result."""
    return images.ensure_images()


def add_node(
    core: client.CoreV1Api,
    state: FleetState,
    golden: Path | None,
    pause: str,
    role: str = "spot",
    imports: Sequence[Path] = (),
    taints: Sequence[Mapping[str, str]] = (),
    lazy: bool = False,
) -> NodeRecord:
    """Start a new real node with the next name; it registers itself with its kubelet (and
    ``taints`` beside its role's). Its containerd starts from the ``golden`` root (every
    image, as a pre-baked AMI), or empty with only the archives of ``imports`` imported,
    and pulls ``lazy``ily through stargz-snapshotter when asked (node_lazy.py)."""
    name = f"{SYSTEM_PREFIX if role == 'system' else NAME_PREFIX}{state.next_index}"
    state.next_index += 1
    slot = free_slot({r.slot for r in state.nodes.values()})
    node = RealNode(name=name, slot=slot, zone=ZONES[slot % len(ZONES)], role=role)
    record = NodeRecord(slot=node.slot, zone=node.zone, role=role)
    state.nodes[name] = record
    state.save()
    node_dir = STATE_DIR / name
    shutil.rmtree(node_dir, ignore_errors=True)
    _write_configs(node, node_dir, pause, lazy)
    if golden is not None:
        node_images.seed_root(golden, node_dir / "containerd" / "root")
    for cg in (node.system_cgroup, node.cgroup_root):
        node_host.make_cgroup(cg)
    node_host.create_netns(node, state.real_nodes())
    record.pids["holder"] = holder = node_host.start_holder(node, node_dir)
    wait_for(f"{name}'s namespaces", lambda: _holder_ready(holder), timeout=15)
    if lazy:
        record.pids["stargz"] = node_lazy.start_daemon(node, node_dir, holder)
    record.pids["containerd"] = node_host.spawn(
        node, [str(paths.binary("containerd")), "--config", str(node_dir / "containerd.toml")],
        node_dir / "containerd.log", holder,
    )  # fmt: skip
    sock = node_dir / "containerd.sock"
    wait_for(f"{name}'s containerd", sock.exists, timeout=30)
    for archive in imports:
        node_images.import_archive(sock, archive, "stargz" if lazy else "overlayfs")
    _start_logind(node, node_dir, holder, record)
    record.pids["kubelet"] = node_host.spawn(
        node, kubelet_argv(node, node_dir, REGION, taints), node_dir / "kubelet.log", holder
    )
    if role == "spot":  # the system group has no GPUs
        record.pids["plugin"] = node_host.spawn(
            node, [str(paths.binary("spotrun-gpu-plugin")), "--count", "8"],
            node_dir / "gpu-plugin.log", holder,
        )  # fmt: skip
    state.save()
    log.info("real node %s (%s, %s) started", name, node.ip, node.zone)
    return record


def _start_logind(node: RealNode, node_dir: Path, holder: int, record: NodeRecord) -> None:
    """The node's system bus and logind stand-in, before the kubelet asks for them."""
    (node_dir / "dbus.conf").write_text(dbus_config())
    record.pids["dbus"] = node_host.spawn(
        node,
        ["dbus-daemon", f"--config-file={node_dir / 'dbus.conf'}", "--nofork", "--nopidfile"],
        node_dir / "dbus.log", holder,
    )  # fmt: skip
    bus = node_dir / "private" / "run_dbus" / "system_bus_socket"
    wait_for(f"{node.name}'s system bus", bus.exists, timeout=15)
    logind_dir = node_dir / "logind"
    logind_dir.mkdir(exist_ok=True)
    record.pids["logind"] = node_host.spawn(
        node,
        [sys.executable, "-m", "spotrun_dev.fake_logind", "--dir", str(logind_dir),
         "--delay", str(SHUTDOWN_GRACE_SECONDS + 15)],
        node_dir / "logind.log", holder,
    )  # fmt: skip
    wait_for(f"{node.name}'s logind", (logind_dir / "ready").exists, timeout=30)


def _holder_ready(pid: int) -> bool:
    """The holder has exec'd sleep: its private mounts are in place."""
    return Path(f"/proc/{pid}/comm").read_text().strip() == "sleep"


def _write_configs(node: RealNode, node_dir: Path, pause: str, lazy: bool = False) -> None:
    (node_dir / "cni").mkdir(parents=True, exist_ok=True)
    (node_dir / "pod-logs").mkdir(parents=True, exist_ok=True)
    section = node_lazy.containerd_section(node_dir) if lazy else ""
    (node_dir / "containerd.toml").write_text(containerd_config(node_dir, pause, lazy=section))
    for host, text in registry_hosts_dirs().items():
        hosts = node_dir / CERTS_DIR / host
        hosts.mkdir(parents=True, exist_ok=True)
        (hosts / "hosts.toml").write_text(text)
    (node_dir / "cni" / "10-spotrun.conflist").write_text(json.dumps(cni_config(node), indent=2))
    (node_dir / "resolv.conf").write_text("nameserver 127.0.0.53\n")  # pods use clusterDNS
    ca = PKI_DIR / "ca.crt"
    crt, key = node_certs.write_node_cert(node.name, ca, PKI_DIR / "ca.key", node_dir / "pki")
    server = f"https://{API_SERVICE_IP}:443"
    kcfg = kubeconfig(server, ca, crt, key, f"system:node:{node.name}")
    (node_dir / "kubeconfig").write_text(yaml.safe_dump(kcfg))
    cfg = kubelet_config(node, node_dir, ca, 10250)
    (node_dir / "kubelet.yaml").write_text(yaml.safe_dump(cfg))


def kill_instance(name: str) -> None:
    """The EC2 instance vanishes: its network drops, then every process on it dies at once.

    The Node object stays: the node lifecycle controller marks it NotReady (Unknown) when
    heartbeats stop, and ``cloud_delete`` later removes it as the cloud controller does.
    """
    state = FleetState.load()
    record = state.nodes.get(name)
    if record is None:
        raise ClusterError(f"{name} is not a real node of this cluster")
    node = record.node(name)
    node_host.cut_network(node)
    node_host.kill_cgroups([node.cgroup_root, node.system_cgroup])


def power_off(name: str, timeout: float = SHUTDOWN_GRACE_SECONDS + 60) -> None:
    """An orderly power-off (as EC2 does at the end of a spot notice on an instance with
    graceful shutdown): logind tells the kubelet, which stops its pods within
    shutdownGracePeriod and releases its delay lock; then the machine goes down."""
    record = FleetState.load().nodes.get(name)
    if record is None:
        raise ClusterError(f"{name} is not a real node of this cluster")
    poweroff = STATE_DIR / name / "logind" / "poweroff"
    os.kill(record.pids["logind"], signal.SIGUSR1)
    wait_for(f"{name} to power off", poweroff.exists, timeout=timeout, interval=1)
    kill_instance(name)


def cloud_delete(core: client.CoreV1Api, name: str) -> None:
    """The cloud controller manager deletes the Node of a terminated instance."""
    try:
        core.delete_node(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


def remove_node(core: client.CoreV1Api | None, state: FleetState, name: str) -> None:
    """Tear one node down completely (processes, cgroups, namespaces, state, Node object)."""
    record = state.nodes.get(name)
    if record is None:
        return
    node = record.node(name)
    node_host.cut_network(node)
    node_host.kill_cgroups([node.cgroup_root, node.system_cgroup])
    node_host.remove_cgroups([node.cgroup_root, node.system_cgroup])
    del state.nodes[name]
    node_host.remove_netns(node, state.real_nodes())
    if core is not None:
        cloud_delete(core, name)
    shutil.rmtree(STATE_DIR / name, ignore_errors=True)
    state.save()


def down(core: client.CoreV1Api | None) -> None:
    """Every real node, the host services and the bridge: gone."""
    state = FleetState.load()
    for name in list(state.nodes):
        remove_node(core, state, name)
    for pid in state.services.values():
        node_services.stop(pid)
    state.services = {}
    state.save()
    node_host.remove_bridge()


def all_ready(core: client.CoreV1Api, nodes: list[RealNode]) -> bool:
    """Ready, and spot nodes advertise their 8 GPUs (the device plugin registered)."""
    for node in nodes:
        try:
            n = core.read_node(node.name)
        except ApiException:
            return False
        ready = [c for c in (n.status.conditions or []) if c.type == "Ready"]
        if not ready or ready[0].status != "True":
            return False
        gpus = str((n.status.allocatable or {}).get("nvidia.com/gpu", "0"))
        if node.role == "spot" and gpus != "8":
            return False
    return True
