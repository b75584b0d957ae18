"""TorchX AppDef -> TrainingRun (pure).

A TrainingRun is one gang of identical nodes (a PyTorchJob master plus workers built from
one pod template), restarted as a whole from the newest checkpoint. The AppDef's single
role maps onto it: image, entrypoint+args, env, resources, replicas -> nodes, mounts ->
the checkpoint volume (plus any other volumes). What that shape cannot express
(several roles, elastic sizes, per-replica arguments, device mounts) is refused with the
reason instead of being silently dropped.

TorchX macros are substituted the way TorchX's own Kubernetes scheduler does it
(torchx/schedulers/kubernetes_scheduler.py ``role_to_pod``/``app_to_resource`` in
meta-pytorch/torchx): ``${app_id}`` is the run's name and ``${rank0_env}`` the variable
naming the master host, which on a PyTorchJob is ``MASTER_ADDR`` (set by the Kubeflow
training operator on every pod).
"""

from __future__ import annotations

import copy
import math
import re
import shlex
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

from torchx.specs import AppDef, BindMount, DeviceMount, Role, VolumeMount, macros

from spotrun_api.contract import GROUP, KIND, VERSION
from spotrun_cli.opts import SpotrunOpts

RANK0_ENV: Final = "MASTER_ADDR"
INSTANCE_TYPE_CAPABILITY: Final = "node.kubernetes.io/instance-type"
CONTAINER: Final = "pytorch"  # the operator merges a podTemplate container of this name
DEFAULT_CHECKPOINT_PATH: Final = "/checkpoints"
# <run>-a<N>-worker-<i> must stay a DNS label (63); keep room for big N and i.
MAX_NAME: Final = 40
MAX_NODES: Final = 512
MAX_GPUS: Final = 16
MIB: Final = 2**20

LABEL_CREATED_BY: Final = "app.kubernetes.io/created-by"
CREATED_BY: Final = "torchx"
ANN_APP: Final = "spotrun.dev/torchx-app"
ANN_ROLE: Final = "spotrun.dev/torchx-role"
ANN_CANCELLED: Final = "spotrun.dev/torchx-cancelled"

_NPROC_FLAGS: Final = ("--nproc_per_node", "--nproc-per-node")


class UnsupportedAppError(ValueError):
    """The AppDef asks for something a TrainingRun cannot express."""


def run_name(app_name: str, suffix: str | None = None) -> str:
    """A unique DNS-1123 label from the app's name: ``train-ddp-1a2b3``."""
    base = re.sub(r"[^a-z0-9-]+", "-", app_name.lower()).strip("-") or "run"
    if not base[0].isalpha():
        base = f"r-{base}"
    tag = suffix or uuid.uuid4().hex[:5]
    return f"{base[: MAX_NAME - len(tag) - 1].rstrip('-')}-{tag}"


def only_role(app: AppDef) -> Role:
    if len(app.roles) != 1:
        names = ", ".join(r.name for r in app.roles) or "none"
        raise UnsupportedAppError(
            f"spotrun runs one gang of identical nodes, but app {app.name!r} has "
            f"{len(app.roles)} roles ({names}): heterogeneous roles cannot be expressed as a "
            "TrainingRun; submit each role as its own run"
        )
    role = app.roles[0]
    n = role.num_replicas
    if role.min_replicas is not None and role.min_replicas != n:
        raise UnsupportedAppError(
            f"role {role.name!r} is elastic ({role.min_replicas}..{n} nodes): spotrun restarts "
            f"a fixed-size gang from its checkpoint instead; use -j {n}x<procs>"
        )
    if not 1 <= n <= MAX_NODES:
        raise UnsupportedAppError(f"role {role.name!r} has {n} replicas; spotrun runs 1..512")
    texts = [*role.args, *role.env.values(), role.entrypoint]
    if any(macros.replica_id in t for t in texts):
        raise UnsupportedAppError(
            f"role {role.name!r} uses ${{replica_id}}: every node of a spotrun gang runs the "
            "same pod template, so per-replica arguments cannot be expressed (torchrun's c10d "
            "rendezvous assigns node ranks itself; the static backend is not supported)"
        )
    return role


def substitute(role: Role, name: str) -> Role:
    values = macros.Values(img_root="", app_id=name, replica_id="", rank0_env=RANK0_ENV)
    return values.apply(role)


def procs_per_node(args: list[str]) -> int | None:
    """``--nproc_per_node N`` of a torchrun command line (also inside ``bash -c '...'``)."""
    words: list[str] = []
    for arg in args:
        try:
            words += shlex.split(arg) if " " in arg else [arg]
        except ValueError:
            words.append(arg)
    for i, w in enumerate(words):
        for flag in _NPROC_FLAGS:
            value = words[i + 1] if w == flag and i + 1 < len(words) else None
            if w.startswith(flag + "="):
                value = w.split("=", 1)[1]
            if value is not None and value.isdigit():
                return int(value)
    return None


def resources(role: Role) -> tuple[dict[str, Any], list[str]]:
    """(spec fields, instance types) from the role's Resource."""
    res = role.resource
    spec: dict[str, Any] = {}
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if res.gpu >= 0:
        if res.gpu > MAX_GPUS:
            raise UnsupportedAppError(f"role {role.name!r} asks {res.gpu} GPUs per node (max 16)")
        spec["gpusPerNode"] = res.gpu
    if res.cpu > 0:
        requests["cpu"] = str(res.cpu)
    if res.memMB > 0:
        requests["memory"] = limits["memory"] = f"{res.memMB}Mi"
    for device, count in sorted(res.devices.items()):
        limits[device] = str(count)
    if requests or limits:
        spec["resources"] = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    types: list[str] = []
    for key, value in res.capabilities.items():
        if key != INSTANCE_TYPE_CAPABILITY:
            raise UnsupportedAppError(
                f"role {role.name!r} has resource capability {key!r}; spotrun understands only "
                f"{INSTANCE_TYPE_CAPABILITY} (use spec.podTemplate for other node constraints)"
            )
        types.append(str(value))
    return spec, types


def checkpoint_volume(role: Role, opts: SpotrunOpts) -> tuple[dict[str, Any], int | None]:
    """(spec.checkpoint, index of the mount that is the checkpoint volume or None)."""
    mounts = role.mounts
    for m in mounts:
        if isinstance(m, DeviceMount):
            raise UnsupportedAppError(
                f"role {role.name!r} mounts device {m.src_path}: spotrun does not pass host "
                "devices through (GPUs come from gpusPerNode; EFA from resource devices)"
            )
    volumes = [i for i, m in enumerate(mounts) if isinstance(m, VolumeMount)]
    chosen: int | None = None
    if opts.checkpoint_claim:
        chosen = next((i for i in volumes if mounts[i].src == opts.checkpoint_claim), None)
    elif opts.checkpoint_path and not opts.checkpoint_size:
        chosen = next((i for i in volumes if mounts[i].dst_path == opts.checkpoint_path), None)
    elif not opts.checkpoint_size and len(volumes) == 1:
        chosen = volumes[0]
    elif not opts.checkpoint_size and len(volumes) > 1:
        raise UnsupportedAppError(
            f"role {role.name!r} mounts {len(volumes)} volumes: say which holds the "
            "checkpoints with -cfg checkpoint_path=<dst> or checkpoint_claim=<claim>"
        )
    volume: dict[str, Any]
    path = opts.checkpoint_path
    if chosen is not None:
        mount = mounts[chosen]
        assert isinstance(mount, VolumeMount)
        if mount.read_only:
            raise UnsupportedAppError(f"the checkpoint volume {mount.src!r} is mounted read-only")
        volume, path = {"claimName": mount.src}, path or mount.dst_path
    elif opts.checkpoint_claim:
        volume = {"claimName": opts.checkpoint_claim}
    elif opts.checkpoint_size:
        volume = {"size": opts.checkpoint_size}
        if opts.checkpoint_storage_class:
            volume["storageClassName"] = opts.checkpoint_storage_class
    else:
        raise UnsupportedAppError(
            "spotrun resumes every attempt from a checkpoint volume: mount a PVC "
            "(--mounts type=volume,src=<claim>,dst=/checkpoints), or set -cfg "
            "checkpoint_claim=<claim> or checkpoint_size=<size>"
        )
    ckpt: dict[str, Any] = {"volume": volume, "path": path or DEFAULT_CHECKPOINT_PATH}
    for key, value in (
        ("interval", opts.checkpoint_interval),
        ("keep", opts.checkpoint_keep),
        ("s3Uri", opts.s3_uri),
    ):
        if value is not None:
            ckpt[key] = value
    return ckpt, chosen


def merge_template(base: Mapping[str, Any] | None, mounts: Mapping[str, Any] | None) -> Any:
    """The user's pod template (``-cfg pod_template=FILE``) plus the role's other mounts."""
    if not mounts:
        return copy.deepcopy(dict(base)) if base else None
    out: dict[str, Any] = copy.deepcopy(dict(base or {}))
    spec = out.setdefault("spec", {})
    spec["volumes"] = [*(spec.get("volumes") or []), *mounts["spec"]["volumes"]]
    containers = spec.setdefault("containers", [])
    ours = mounts["spec"]["containers"][0]["volumeMounts"]
    main = next((c for c in containers if c.get("name") == CONTAINER), None)
    if main is None:
        containers.append({"name": CONTAINER, "volumeMounts": ours})
    else:
        main["volumeMounts"] = [*(main.get("volumeMounts") or []), *ours]
    return out


def extra_mounts(role: Role, skip: int | None) -> dict[str, Any] | None:
    """spec.podTemplate carrying the role's other mounts (PVCs and host paths)."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for i, m in enumerate(role.mounts):
        if i == skip:
            continue
        name = f"torchx-mount-{i}"
        if isinstance(m, VolumeMount):
            volumes.append({"name": name, "persistentVolumeClaim": {"claimName": m.src}})
        elif isinstance(m, BindMount):
            volumes.append({"name": name, "hostPath": {"path": m.src_path}})
        else:
            continue
        mounts.append({"name": name, "mountPath": m.dst_path, "readOnly": bool(m.read_only)})
    if not volumes:
        return None
    container = {"name": CONTAINER, "volumeMounts": mounts}
    return {"spec": {"volumes": volumes, "containers": [container]}}


def _env(role: Role) -> list[dict[str, str]]:
    bad = sorted(k for k in role.env if k.startswith("SPOTRUN_"))
    if bad:
        raise UnsupportedAppError(
            f"env {', '.join(bad)}: SPOTRUN_* variables belong to the operator/trainer contract"
        )
    return [{"name": k, "value": v} for k, v in role.env.items()]


def _capacity(opts: SpotrunOpts, types: list[str]) -> dict[str, Any]:
    cap: dict[str, Any] = {}
    if opts.capacity_type:
        cap["type"] = opts.capacity_type
    if opts.instance_types or types:
        cap["instanceTypes"] = list(opts.instance_types or types)
    if opts.on_demand_fallback_after:
        cap["onDemandFallbackAfter"] = opts.on_demand_fallback_after
    return cap


def _optional_fields(role: Role, opts: SpotrunOpts) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # 0 is a budget (stop at the first failure), so only None falls back to max_retries;
    # TorchX's max_retries defaults to 0, which there means "unset" and keeps the CRD's default.
    failures = opts.max_failures
    if failures is None and role.max_retries > 0:
        failures = role.max_retries
    for key, value in (
        ("maxPreemptions", opts.max_preemptions),
        ("maxFailures", failures),
        ("queueName", opts.queue),
        ("imagePullPolicy", opts.image_pull_policy),
        ("terminationGracePeriodSeconds", opts.grace_period_seconds),
    ):
        if value is not None:
            out[key] = value
    if opts.budget_usd is not None:
        out["budget"] = {"maxUSD": float(opts.budget_usd)}
    return out


def to_trainingrun(
    app: AppDef, opts: SpotrunOpts, name: str, pod_template: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The TrainingRun ``name`` that runs ``app`` (``pod_template``: the parsed
    ``-cfg pod_template`` file); UnsupportedAppError says what cannot be expressed."""
    role = substitute(only_role(app), name)
    res_spec, types = resources(role)
    ckpt, ckpt_mount = checkpoint_volume(role, opts)
    spec: dict[str, Any] = {
        "image": role.image,
        "command": [role.entrypoint],
        "args": list(role.args),
        "nodes": role.num_replicas,
        **res_spec,
        "checkpoint": ckpt,
    }
    nproc = procs_per_node(role.args)
    if nproc:
        spec["procsPerNode"] = nproc
    if role.env:
        spec["env"] = _env(role)
    capacity = _capacity(opts, types)
    if capacity:
        spec["capacity"] = capacity
    spec.update(_optional_fields(role, opts))
    template = merge_template(pod_template, extra_mounts(role, ckpt_mount))
    if template:
        spec["podTemplate"] = template
    meta: dict[str, Any] = {
        "name": name,
        "labels": {LABEL_CREATED_BY: CREATED_BY},
        "annotations": {ANN_APP: app.name, ANN_ROLE: role.name},
    }
    if opts.namespace:
        meta["namespace"] = opts.namespace
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": meta, "spec": spec}


def _whole_units(quantity: object, unit: int) -> int:
    """A Kubernetes quantity (``500m``, ``1.5``, ``1Gi``, ``1G``, ``1073741824``) in whole
    ``unit``s, rounded up so a role read back never asks for less than the run requests."""
    from kubernetes.utils.quantity import parse_quantity

    amount: Decimal = parse_quantity(str(quantity))
    return math.ceil(amount / unit)


def role_of(run: Mapping[str, Any]) -> Role:
    """The TorchX Role a TrainingRun runs (``torchx describe``).

    Requests are Kubernetes quantities; TorchX's Resource counts whole cpus and memMB.
    Both are rounded up (``500m`` -> 1 cpu, ``1G`` -> 954). memMB is read as MiB because
    ``resources`` writes it as ``<memMB>Mi``, which keeps AppDef -> run -> Role exact.
    """
    from torchx.specs import Resource

    spec = run.get("spec") or {}
    ann = (run.get("metadata") or {}).get("annotations") or {}
    req = (spec.get("resources") or {}).get("requests") or {}
    command = list(spec.get("command") or [])
    return Role(
        name=ann.get(ANN_ROLE, "trainer"),
        image=str(spec.get("image", "")),
        entrypoint=command[0] if command else "",
        args=[*command[1:], *(spec.get("args") or [])],
        env={e["name"]: str(e.get("value", "")) for e in spec.get("env") or [] if "name" in e},
        num_replicas=int(spec.get("nodes") or 1),
        resource=Resource(
            cpu=_whole_units(req.get("cpu", 0), 1),
            gpu=int(spec.get("gpusPerNode", 8)),
            memMB=_whole_units(req.get("memory", 0), MIB),
        ),
    )
