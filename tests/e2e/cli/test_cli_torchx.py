"""The real ``torchx`` CLI with the ``spotrun`` scheduler against the local cluster and the
operator: run -> status -> describe -> list -> log (across a preemption) -> cancel.

The kwok fleet's pods run no containers, so the apiserver can serve no log for them; what
this proves for ``log`` is that the follower asks for the live attempt's master pod, and
after a preemption for the next attempt's, and stops when the run is cancelled.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from kubernetes import client

from controller_helpers import get, running_gang, wait_status
from kube_helpers import poll
from kubectl_helpers import BIN, Follower, cli_env, spotrun_cmd, torchx
from spotrun_dev import inject


def status_of(kubeconfig: Path, handle: str) -> str:
    return str(torchx(kubeconfig, "status", handle).stdout)


def submit(kc: Path, namespace: str, claim: str) -> tuple[str, str]:
    """``torchx run -s spotrun dist.ddp -j 2x8``: (app handle, run name)."""
    cfg = f"namespace={namespace},checkpoint_claim={claim},checkpoint_interval=5m"
    cfg += ",max_preemptions=5,budget_usd=500,capacity_type=spot"
    out = torchx(
        kc, "run", "-s", "spotrun", "-cfg", cfg,
        "dist.ddp", "-j", "2x8", "--gpu", "8", "--script", "train.py", "--", "--epochs", "3",
    ).stdout  # fmt: skip
    handle = out.strip().splitlines()[-1]
    assert handle.startswith(f"spotrun://torchx/{namespace}:train-"), out
    return handle, handle.rsplit(":", 1)[1]


def check_spec(spec: dict[str, Any], name: str, claim: str) -> None:
    """The TrainingRun the AppDef became."""
    assert (spec["nodes"], spec["gpusPerNode"], spec["procsPerNode"]) == (2, 8, 8)
    assert spec["checkpoint"]["volume"] == {"claimName": claim}
    assert spec["checkpoint"]["interval"] == "5m"
    assert (spec["maxPreemptions"], spec["budget"], spec["capacity"]["type"]) == (
        5,
        {"maxUSD": 500.0},
        "spot",
    )
    assert spec["command"] == ["bash"]
    assert f"--rdzv_id {name}" in spec["args"][1] or f"--rdzv_id '{name}'" in spec["args"][1]
    assert spec["args"][1].endswith("train.py --epochs 3")


def check_followed(name: str, tail: tuple[int, str, str], follow: tuple[int, str, str]) -> None:
    """Both followers streamed each attempt's master pod in order, then ended with the run."""
    f_rc, f_out, f_err = follow
    assert f_rc == 0, f_err
    assert f_out.splitlines() == [
        f"--- spotrun: attempt 1, pod {name}-a1-master-0 ---",
        f"--- spotrun: attempt 2, pod {name}-a2-master-0 ---",
    ], (f_out, f_err)
    for n in (1, 2):  # kwok pods: the apiserver has no log to serve
        assert f"no log from pod {name}-a{n}-master-0: " in f_err, f_err
    assert "the run is Cancelled" in f_err
    t_rc, t_out, t_err = tail
    assert t_rc == 0, t_err
    assert f"attempt 1, pod {name}-a1-master-0" in t_out, (t_out, t_err)
    assert f"attempt 2, pod {name}-a2-master-0" in t_out, (t_out, t_err)
    assert f"no log from pod {name}-a2-master-0" in t_err


def test_torchx_run_status_list_log_cancel(
    cluster: Any,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator: Any,
) -> None:
    kc = cluster.kubeconfig
    handle, name = submit(kc, namespace, checkpoint_pvc)
    check_spec(get(custom, namespace, name)["spec"], name, checkpoint_pvc)

    # The operator runs it on the fleet; torchx sees it RUNNING with both replicas.
    running_gang(core, namespace, name, 1)
    poll("torchx status RUNNING", lambda: "State: RUNNING" in status_of(kc, handle), timeout=90)
    st = status_of(kc, handle)
    assert "Num Restarts: 0" in st and "train[0]:RUNNING" in st and "train[1]:RUNNING" in st
    described = torchx(kc, "describe", handle).stdout
    assert "'num_replicas': 2" in described and "'entrypoint': 'bash'" in described
    listed = torchx(kc, "list", "-s", "spotrun", "-cfg", f"namespace={namespace}").stdout
    assert any(handle in line and "RUNNING" in line for line in listed.splitlines()), listed

    # Follow the master's log with both tools while attempt 1 is preempted.
    env = cli_env(kc)
    tail = Follower([str(BIN / "torchx"), "log", "--tail", f"{handle}/train/0"], env)
    follow = Follower([*spotrun_cmd(), "-n", namespace, "logs", name, "-f"], env)
    try:
        for f in (tail, follow):
            poll("the follower on attempt 1", lambda f=f: f.saw(f"{name}-a1-master-0"), 60)
        gang = running_gang(core, namespace, name, 1)
        inject.interrupt(core, gang[0].spec.node_name, "nth")
        running_gang(core, namespace, name, 2)
        wait_status(custom, namespace, name, "attempt 2 Running", _attempt_running(2))
        for f in (tail, follow):
            poll("the follower on attempt 2", lambda f=f: f.saw(f"{name}-a2-master-0"), 60)
        poll("torchx: 1 restart", lambda: "Num Restarts: 1" in status_of(kc, handle), 60)

        torchx(kc, "cancel", handle)
        assert get(custom, namespace, name)["spec"]["suspend"] is True
        poll("torchx status CANCELLED", lambda: "State: CANCELLED" in status_of(kc, handle), 120)
        check_followed(name, tail.wait(60), follow.wait(60))
    finally:
        tail.stop()
        follow.stop()
    # cancel kept the run and its ledger; the state is terminal for torchx.
    st = wait_status(custom, namespace, name, "Suspended", lambda s: s.get("phase") == "Suspended")
    assert (st["attempt"], st["preemptions"], st["failures"]) == (2, 1, 0)
    # delete removes the run; torchx then no longer knows the app.
    torchx(kc, "delete", handle)
    poll("the run gone", lambda: not custom_items(cluster, namespace), 60)
    gone = torchx(kc, "status", handle, ok=False)
    assert gone.returncode == 1 and "does not exist" in gone.stderr, gone.stderr


def _attempt_running(n: int) -> Any:
    return lambda s: s.get("phase") == "Running" and s.get("attempt") == n


def test_torchx_refuses_what_spotrun_cannot_express(
    cluster: Any, namespace: str, crd: dict[str, Any], tmp_path: Path
) -> None:
    kc = cluster.kubeconfig
    comp = tmp_path / "two_roles.py"
    comp.write_text(
        textwrap.dedent(
            '''
            import torchx.specs as specs


            def trainer_and_server(image: str = "img") -> specs.AppDef:
                """A trainer plus a parameter server: two different roles."""
                res = specs.Resource(cpu=1, gpu=8, memMB=1024)
                mounts = [specs.VolumeMount(src="ckpt", dst_path="/ckpt")]
                return specs.AppDef(
                    "ps",
                    roles=[
                        specs.Role("trainer", image, entrypoint="python", resource=res,
                                   mounts=mounts),
                        specs.Role("server", image, entrypoint="python", resource=res),
                    ],
                )
            '''
        )
    )
    cfg = f"namespace={namespace}"
    done = torchx(kc, "run", "-s", "spotrun", "-cfg", cfg, f"{comp}:trainer_and_server", ok=False)
    assert done.returncode != 0
    assert "heterogeneous roles cannot be expressed" in done.stderr, done.stderr
    assert "2 roles (trainer, server)" in done.stderr

    # No checkpoint volume: refused before anything reaches the cluster.
    done = torchx(
        kc, "run", "-s", "spotrun", "-cfg", cfg, "dist.ddp", "-j", "1x1", "-m", "x", ok=False
    )
    assert done.returncode != 0 and "checkpoint volume" in done.stderr, done.stderr

    # A spec the CRD rejects comes back with the apiserver's reason.
    bad = f"{cfg},checkpoint_claim=ckpt,capacity_type=cheap"
    done = torchx(kc, "run", "-s", "spotrun", "-cfg", bad, "dist.ddp", "-m", "x", ok=False)
    assert done.returncode != 0
    assert 'spec.capacity.type: Unsupported value: "cheap"' in done.stderr, done.stderr
    assert not custom_items(cluster, namespace)

    # -m module, dry run: the request torchx would submit.
    dry = torchx(kc, "run", "--dryrun", "-s", "spotrun", "-cfg", f"{cfg},checkpoint_size=10Gi",
                 "dist.ddp", "-j", "1x2", "-m", "spotrun_lm.demo").stdout  # fmt: skip
    assert "kind: TrainingRun" in dry and "-m spotrun_lm.demo" in dry
    assert "size: 10Gi" in dry and f"namespace: {namespace}" in dry


def custom_items(cluster: Any, namespace: str) -> list[Any]:
    api = client.CustomObjectsApi(cluster.api_client())
    items: list[Any] = api.list_namespaced_custom_object(
        "spotrun.dev", "v1alpha1", namespace, "trainingruns"
    )["items"]
    return items
