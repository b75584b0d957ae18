"""A real node without the project's images, for tests of what a node pulls.

Every other real node starts from the golden containerd root (every image pre-imported,
as a pre-baked AMI). A bare node starts with an empty containerd holding only the sandbox
(pause) image, like a fresh EKS node from the stock AMI: any other image a pod of it runs
is pulled from a registry (the harness's, through the node's ``hosts.toml``). It joins the
on-demand system group (role ``bare``, label ``spotrun.dev/preloaded-images=false``);
``ensure_real_nodes`` neither counts nor replaces it, and the test that adds it removes it.
"""

from __future__ import annotations

from kubernetes import client

from spotrun_dev import realnodes
from spotrun_dev.waiting import wait_for


def add_bare_node(core: client.CoreV1Api, lazy: bool = False) -> str:
    """Start a bare node, pulling ``lazy``ily when asked (node_lazy.py); returns its name
    once it is Ready."""
    state = realnodes.FleetState.load()
    pause = realnodes.built_images()["pause"]
    record = realnodes.add_node(
        core, state, None, pause.ref, "bare", imports=[pause.archive], lazy=lazy
    )
    name = next(n for n, r in state.nodes.items() if r is record)
    state.save()
    node = record.node(name)
    wait_for(f"{name} Ready", lambda: realnodes.all_ready(core, [node]), timeout=120)
    return name


def remove_bare_node(core: client.CoreV1Api, name: str) -> None:
    """Tear the bare node down (its Node object too)."""
    realnodes.remove_node(core, realnodes.FleetState.load(), name)
