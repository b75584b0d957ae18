"""The host side of real nodes: the bridge, each node's namespaces, cgroups and processes.

Every real node is a "test host" made here and nowhere else:
- a network namespace with one veth to the harness's bridge (``node_config.BRIDGE``); no
  default route and no forwarding on the host, so no packet can leave the machine;
- a private mount namespace held by one ``sleep`` process, so the node's
  ``/var/lib/kubelet/device-plugins``, ``/var/log/containers``, ``/run/containerd`` and CNI
  state are its own, and every mount it makes disappears with it;
- two cgroups per v1 hierarchy: ``system_cgroup`` (containerd, shims, kubelet, plugin) and
  the kubelet's ``cgroupRoot`` (every pod). Killing everything in both is the instance
  vanishing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from spotrun_dev.node_config import (
    API_SERVICE_IP,
    BRIDGE,
    BRIDGE_MAC,
    GATEWAY,
    NODE_NET,
    SERVICE_NET,
    RealNode,
)
from spotrun_dev.waiting import ClusterError

log = logging.getLogger("spotrun_dev.node_host")

CGROUP_V1 = Path("/sys/fs/cgroup")
# The folders a node gets a private copy of (constant paths in the kubelet and containerd).
PRIVATE_DIRS = (
    "/var/lib/kubelet/device-plugins",
    "/var/log/containers",
    "/run/containerd",
    "/var/lib/cni",
    "/run/netns",
    "/run/dbus",  # the node's own system bus (fake_logind.py)
)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], text=True, capture_output=True)
    if check and proc.returncode != 0:
        raise ClusterError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def ensure_bridge() -> None:
    """The bridge with the gateway address and the `kubernetes` Service address."""
    if ip("link", "show", BRIDGE, check=False).returncode != 0:
        ip("link", "add", BRIDGE, "type", "bridge")
    # A fixed address: see BRIDGE_MAC (the gateway's MAC must not follow the ports).
    if Path(f"/sys/class/net/{BRIDGE}/address").read_text().strip() != BRIDGE_MAC:
        ip("link", "set", BRIDGE, "address", BRIDGE_MAC)
    addrs = ip("-o", "addr", "show", "dev", BRIDGE).stdout
    for cidr in (f"{GATEWAY}/{NODE_NET.prefixlen}", f"{API_SERVICE_IP}/32"):
        if f" {cidr} " not in addrs:
            ip("addr", "add", cidr, "dev", BRIDGE)
    ip("link", "set", BRIDGE, "up")


def remove_bridge() -> None:
    if ip("link", "show", BRIDGE, check=False).returncode == 0:
        ip("link", "del", BRIDGE)


def v1_hierarchies() -> list[Path]:
    """Mounted cgroup v1 hierarchies (controllers and the named systemd one, not cgroup2)."""
    skip = {"unified"}  # the kubelet checks the named systemd hierarchy too
    return [p for p in sorted(CGROUP_V1.iterdir()) if p.is_dir() and p.name not in skip]


def make_cgroup(path: str) -> None:
    """``path`` in every v1 hierarchy; cpuset needs cpus/mems before it can take tasks."""
    for h in v1_hierarchies():
        d = h / path.lstrip("/")
        d.mkdir(parents=True, exist_ok=True)
        if h.name == "cpuset":
            for f in ("cpuset.cpus", "cpuset.mems"):
                if not (d / f).read_text().strip():
                    (d / f).write_text((h / f).read_text())


def _join_cgroup(path: str) -> Callable[[], None]:
    """A preexec_fn that moves the child into ``path`` in every v1 hierarchy."""
    targets = [h / path.lstrip("/") / "cgroup.procs" for h in v1_hierarchies()]

    def join() -> None:
        pid = str(os.getpid())
        for t in targets:
            with open(t, "w") as f:
                f.write(pid)

    return join


def cgroup_pids(path: str) -> set[int]:
    """Every process in ``path`` or below, from the pids hierarchy."""
    root = CGROUP_V1 / "pids" / path.lstrip("/")
    pids: set[int] = set()
    if not root.is_dir():
        return pids
    for d, _, _ in os.walk(root):
        with contextlib.suppress(OSError):
            pids.update(int(x) for x in Path(d, "cgroup.procs").read_text().split())
    return pids


def kill_cgroups(paths: Sequence[str], timeout: float = 20.0) -> None:
    """SIGKILL every process in the cgroups until none is left (forks included)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = set().union(*(cgroup_pids(p) for p in paths))
        if not pids:
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"processes survived SIGKILL in {paths}: {sorted(pids)}")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def remove_cgroups(paths: Sequence[str]) -> None:
    """rmdir the (empty) cgroup trees, deepest first, in every hierarchy."""
    for h in v1_hierarchies():
        for path in paths:
            root = h / path.lstrip("/")
            if not root.is_dir():
                continue
            for d, _, _ in sorted(os.walk(root), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(d)


def create_netns(node: RealNode, peers: Sequence[RealNode]) -> None:
    """The node's namespace, its veth on the bridge, and routes to every peer's pods."""
    ns = node.netns
    # Every node is new (add_node): a namespace of its name is a leftover of an earlier
    # cluster, whose node names restarted with a new state folder. Its CNI bridge keeps
    # that node's pod CIDR, and every sandbox then failed ("cni0" already has an IP address
    # different from ...): a new node starts in a new namespace.
    if Path(f"/run/netns/{ns}").exists():
        log.info("removing the leftover network namespace %s", ns)
        ip("netns", "del", ns, check=False)
    ip("netns", "add", ns)
    if ip("-n", ns, "link", "show", "eth0", check=False).returncode != 0:
        # A host-side veth left by a node of an earlier session (same slot) has its peer in
        # another namespace; deleting it removes the pair and frees the slot's address.
        ip("link", "del", node.host_veth, check=False)
        ip("link", "add", node.host_veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
    ip("link", "set", node.host_veth, "master", BRIDGE, "up")
    ip("-n", ns, "addr", "replace", f"{node.ip}/{NODE_NET.prefixlen}", "dev", "eth0")
    ip("-n", ns, "link", "set", "eth0", "up")
    ip("-n", ns, "link", "set", "lo", "up")
    # The apiserver's Service address lives on the host side of the bridge.
    ip("-n", ns, "route", "replace", SERVICE_NET, "via", str(GATEWAY))
    _sysctl(ns, "net.ipv4.ip_forward", "1")
    # The host reaches this node's pods (replies to the apiserver LB and CoreDNS).
    ip("route", "replace", node.pod_cidr, "via", node.ip, "dev", BRIDGE)
    for peer in peers:
        if peer.name != node.name:
            add_peer_route(node, peer)
            add_peer_route(peer, node)


def add_peer_route(node: RealNode, peer: RealNode) -> None:
    """In ``node``'s namespace: ``peer``'s pods are reached directly over the bridge."""
    ip("-n", node.netns, "route", "replace", peer.pod_cidr, "via", peer.ip, check=False)


def remove_netns(node: RealNode, peers: Sequence[RealNode]) -> None:
    for peer in peers:
        if peer.name != node.name:
            ip("-n", peer.netns, "route", "del", node.pod_cidr, check=False)
    ip("route", "del", node.pod_cidr, check=False)
    ip("link", "del", node.host_veth, check=False)
    ip("netns", "del", node.netns, check=False)


def cut_network(node: RealNode) -> None:
    """The instance's network goes first: its veth goes down."""
    ip("link", "set", node.host_veth, "down", check=False)


def _sysctl(ns: str, key: str, value: str) -> None:
    subprocess.run(
        ["nsenter", f"--net=/run/netns/{ns}", "sysctl", "-q", "-w", f"{key}={value}"], check=True
    )


def start_holder(node: RealNode, state: Path) -> int:
    """The process that holds the node's mount namespace, with its private folders."""
    binds = []
    for target in PRIVATE_DIRS:
        Path(target).mkdir(parents=True, exist_ok=True)
        src = state / "private" / target.strip("/").replace("/", "_")
        src.mkdir(parents=True, exist_ok=True)
        binds.append(f"mount --bind {src} {target}")
    script = " && ".join([*binds, "exec sleep infinity"])
    return spawn(
        node,
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
        state / "holder.log",
        holder=None,
    )


def spawn(node: RealNode, argv: Sequence[str], log_file: Path, holder: int | None) -> int:
    """Start ``argv`` in the node's namespaces and system cgroup; returns its pid.

    nsenter execs ``argv`` after joining the namespaces, so the pid is the daemon's own.
    """
    if holder is None:
        enter = ["nsenter", f"--net=/run/netns/{node.netns}", "--"]
    else:
        enter = ["nsenter", "-t", str(holder), "--mount", "--net", "--"]
    with log_file.open("ab") as out:
        proc = subprocess.Popen(
            [*enter, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_join_cgroup(node.system_cgroup),
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
        )
    return proc.pid


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # A zombie child of ours still answers kill 0.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return False
    return True
