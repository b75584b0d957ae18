"""AppDef -> TrainingRun: what the real dist.ddp component produces, and what is refused."""

from __future__ import annotations

import re
import warnings
from typing import Any

import pytest
from torchx.components import dist
from torchx.specs import AppDef, BindMount, DeviceMount, Resource, Role, VolumeMount

from spotrun_cli import translate as t
from spotrun_cli.opts import SpotrunOpts


def ddp(**kwargs: object) -> AppDef:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dist.ddp is a deprecated alias of dist.torchrun
        app: AppDef = dist.ddp(**kwargs)
        return app


def opts(**kwargs: object) -> SpotrunOpts:
    made: SpotrunOpts = SpotrunOpts.from_cfg({"namespace": "ml", **kwargs})
    return made


def test_ddp_two_nodes_maps_every_field() -> None:
    app = ddp(
        script="train.py",
        j="2x8",
        gpu=8,
        cpu=90,
        memMB=1_000_000,
        image="registry.example/trainer:1",
        env={"HF_HOME": "/cache"},
        # As the CLI's --mounts hands them over: split at commas.
        mounts=[
            *("type=volume", "src=ckpt", "dst=/ckpt"),
            *("type=bind", "src=/data", "dst=/data", "readonly"),
        ],
    )
    body = t.to_trainingrun(app, opts(), "train-abcde")
    spec = body["spec"]
    assert body["metadata"]["namespace"] == "ml" and body["metadata"]["name"] == "train-abcde"
    assert body["metadata"]["annotations"] == {t.ANN_APP: "train", t.ANN_ROLE: "train"}
    assert (spec["image"], spec["nodes"], spec["gpusPerNode"]) == (
        "registry.example/trainer:1",
        2,
        8,
    )
    assert spec["procsPerNode"] == 8
    assert spec["resources"] == {
        "requests": {"cpu": "90", "memory": "1000000Mi"},
        "limits": {"memory": "1000000Mi"},
    }
    # The mounted PVC is the checkpoint volume, at the mount's path.
    assert spec["checkpoint"] == {"volume": {"claimName": "ckpt"}, "path": "/ckpt"}
    # The other mount rides in the pod template, on the pytorch container.
    tmpl = spec["podTemplate"]["spec"]
    assert tmpl["volumes"] == [{"name": "torchx-mount-1", "hostPath": {"path": "/data"}}]
    assert tmpl["containers"] == [
        {
            "name": "pytorch",
            "volumeMounts": [{"name": "torchx-mount-1", "mountPath": "/data", "readOnly": True}],
        }
    ]
    assert {"name": "HF_HOME", "value": "/cache"} in spec["env"]
    # Macros: the rendezvous id is the run, rank 0's host is the PyTorchJob master.
    assert spec["command"] == ["bash"] and spec["args"][0] == "-c"
    line = spec["args"][1]
    assert "--rdzv_endpoint ${MASTER_ADDR:=localhost}:29500" in line
    assert "--rdzv_id 'train-abcde'" in line and "${" not in line.replace("${MASTER_ADDR", "")
    assert line.endswith("train.py")
    assert "capacity" not in spec and "maxFailures" not in spec  # CRD defaults


def test_module_and_run_options() -> None:
    app = ddp(m="spotrun_lm", j="1x1", gpu=1, max_retries=2)
    o = opts(
        checkpoint_claim="shared",
        checkpoint_path="/mnt/ck",
        checkpoint_interval="auto",
        capacity_type="on-demand",
        instance_types=["p5.48xlarge", "p4d.24xlarge"],
        max_preemptions=7,
        budget_usd=250.5,
        queue="team-a",
    )
    spec = t.to_trainingrun(app, o, "r-1")["spec"]
    assert spec["args"][1].endswith("-m spotrun_lm")
    assert spec["checkpoint"] == {
        "volume": {"claimName": "shared"},
        "path": "/mnt/ck",
        "interval": "auto",
    }
    assert spec["capacity"] == {
        "type": "on-demand",
        "instanceTypes": ["p5.48xlarge", "p4d.24xlarge"],
    }
    assert (spec["maxPreemptions"], spec["maxFailures"], spec["queueName"]) == (7, 2, "team-a")
    assert spec["budget"] == {"maxUSD": 250.5}


def test_new_volume_and_instance_type_capability() -> None:
    app = ddp(script="t.py", j="2x8", h="aws_p4d.24xlarge")
    spec = t.to_trainingrun(app, opts(checkpoint_size="500Gi"), "r")["spec"]
    assert spec["checkpoint"] == {"volume": {"size": "500Gi"}, "path": "/checkpoints"}
    assert spec["capacity"] == {"instanceTypes": ["p4d.24xlarge"]}
    assert spec["gpusPerNode"] == 8
    assert spec["resources"]["limits"]["vpc.amazonaws.com/efa"] == "4"


def _role(**kwargs: object) -> Role:
    base: dict[str, object] = {
        "name": "trainer",
        "image": "img",
        "entrypoint": "python",
        "resource": Resource(cpu=1, gpu=8, memMB=1024),
        "mounts": [VolumeMount(src="ckpt", dst_path="/ckpt")],
    }
    role: Role = Role(**{**base, **kwargs})
    return role


@pytest.mark.parametrize(
    ("app", "why"),
    [
        (AppDef("two", roles=[_role(), _role(name="ps")]), "heterogeneous roles"),
        (AppDef("none", roles=[]), "0 roles"),
        (AppDef("el", roles=[_role(min_replicas=1, num_replicas=4)]), "elastic"),
        (AppDef("rid", roles=[_role(args=["--rank", "${replica_id}"])]), "per-replica"),
        (AppDef("dev", roles=[_role(mounts=[DeviceMount("/dev/fuse", "/dev/fuse")])]), "device"),
        (AppDef("nockpt", roles=[_role(mounts=[])]), "checkpoint volume"),
        (
            AppDef(
                "two-vol",
                roles=[_role(mounts=[VolumeMount("a", "/a"), VolumeMount("b", "/b")])],
            ),
            "say which holds the checkpoints",
        ),
        (AppDef("ro", roles=[_role(mounts=[VolumeMount("a", "/a", read_only=True)])]), "read-only"),
        (AppDef("env", roles=[_role(env={"SPOTRUN_ATTEMPT": "1"})]), "SPOTRUN_ATTEMPT"),
        (
            AppDef("cap", roles=[_role(resource=Resource(1, 8, 1, capabilities={"x": "y"}))]),
            "capability 'x'",
        ),
        (AppDef("gpus", roles=[_role(resource=Resource(1, 32, 1))]), "32 GPUs"),
    ],
)
def test_refused_with_the_reason(app: AppDef, why: str) -> None:
    with pytest.raises(t.UnsupportedAppError, match=re.escape(why)):
        t.to_trainingrun(app, opts(), "r")


def test_checkpoint_mount_chosen_by_path_among_several() -> None:
    role = _role(
        mounts=[VolumeMount("data", "/data"), BindMount("/x", "/x"), VolumeMount("ck", "/ck")]
    )
    spec = t.to_trainingrun(AppDef("a", roles=[role]), opts(checkpoint_path="/ck"), "r")["spec"]
    assert spec["checkpoint"]["volume"] == {"claimName": "ck"}
    names = [v["name"] for v in spec["podTemplate"]["spec"]["volumes"]]
    assert names == ["torchx-mount-0", "torchx-mount-1"]


def test_run_name_is_a_short_dns_label() -> None:
    name = t.run_name("My_Experiment/Run.42 with a very long descriptive name", "1a2b3")
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= t.MAX_NAME
    assert name.endswith("-1a2b3") and name.startswith("my-experiment-run-42")
    assert t.run_name("42", "abcde") == "r-42-abcde"
    assert t.run_name("x") != t.run_name("x")


def test_role_of_reads_the_run_back() -> None:
    app = ddp(script="train.py", j="3x8", gpu=8, cpu=4, memMB=2048)
    body = t.to_trainingrun(app, opts(checkpoint_size="1Gi"), "r")
    role = t.role_of(body)
    assert (role.name, role.num_replicas, role.entrypoint) == ("train", 3, "bash")
    assert (role.resource.cpu, role.resource.gpu, role.resource.memMB) == (4, 8, 2048)
    assert role.args == body["spec"]["args"]


def test_procs_per_node_forms() -> None:
    assert t.procs_per_node(["-c", "torchrun --nproc_per_node 4 x.py"]) == 4
    assert t.procs_per_node(["--nproc-per-node=2", "x.py"]) == 2
    assert t.procs_per_node(["python", "x.py"]) is None


def test_pod_template_merged_with_extra_mounts() -> None:
    role = _role(mounts=[VolumeMount("ck", "/ck"), VolumeMount("data", "/data")])
    user: dict[str, Any] = {
        "spec": {
            "nodeSelector": {"spotrun.dev/real-node": "true"},
            "containers": [{"name": "pytorch", "imagePullPolicy": "Never"}],
        }
    }
    spec = t.to_trainingrun(AppDef("a", roles=[role]), opts(checkpoint_claim="ck"), "r", user)[
        "spec"
    ]
    tmpl = spec["podTemplate"]["spec"]
    assert tmpl["nodeSelector"] == {"spotrun.dev/real-node": "true"}
    assert tmpl["volumes"] == [
        {"name": "torchx-mount-1", "persistentVolumeClaim": {"claimName": "data"}}
    ]
    assert tmpl["containers"] == [
        {
            "name": "pytorch",
            "imagePullPolicy": "Never",
            "volumeMounts": [{"name": "torchx-mount-1", "mountPath": "/data", "readOnly": False}],
        }
    ]
    assert "volumeMounts" not in user["spec"]["containers"][0]  # the caller's dict is untouched
    alone = t.to_trainingrun(AppDef("a", roles=[_role()]), opts(), "r", user)["spec"]
    assert alone["podTemplate"] == user


def _run_requesting(requests: dict[str, object]) -> dict[str, Any]:
    return {"spec": {"image": "img", "nodes": 1, "resources": {"requests": requests}}}


@pytest.mark.parametrize(
    ("cpu", "cores"),
    [("500m", 1), ("1.5", 2), ("2", 2), (2, 2), ("100m", 1), ("2000m", 2), ("0", 0)],
)
def test_role_of_reads_cpu_quantities_rounding_up(cpu: object, cores: int) -> None:
    """Whole cores (TorchX's Resource.cpu is an int), rounded up: never under the request."""
    assert t.role_of(_run_requesting({"cpu": cpu})).resource.cpu == cores


@pytest.mark.parametrize(
    ("memory", "mib"),
    [
        ("1Gi", 1024),
        ("512Mi", 512),
        ("1G", 954),  # 10^9 bytes = 953.67 MiB, rounded up
        ("1073741824", 1024),
        (1073741824, 1024),
        ("1.5Gi", 1536),
        ("1000000Mi", 1_000_000),
    ],
)
def test_role_of_reads_memory_quantities_as_mib(memory: object, mib: int) -> None:
    assert t.role_of(_run_requesting({"memory": memory})).resource.memMB == mib


def test_role_of_without_requests_is_zero() -> None:
    res = t.role_of(_run_requesting({})).resource
    assert (res.cpu, res.memMB) == (0, 0)


@pytest.mark.parametrize("retries", [0, 2])
def test_max_failures_zero_is_kept(retries: int) -> None:
    """maxFailures 0 (stop at the first failure) is a value, not "unset"."""
    app = ddp(script="t.py", j="1x1", max_retries=retries)
    spec = t.to_trainingrun(app, opts(checkpoint_claim="ck", max_failures=0), "r")["spec"]
    assert spec["maxFailures"] == 0


def test_max_failures_zero_through_the_scheduler_dryrun() -> None:
    from spotrun_cli.torchx_scheduler import SpotrunScheduler

    app = ddp(script="t.py", j="1x1", max_retries=3)
    cfg = {"namespace": "ml", "checkpoint_claim": "ck", "max_failures": 0}
    # The namespace is given, so the dry run never reads a kubeconfig or calls a cluster.
    info = SpotrunScheduler("test").submit_dryrun(app, cfg)
    assert info.request.resource["spec"]["maxFailures"] == 0
