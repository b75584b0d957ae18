"""The local control plane is real, shaped like EKS spot p4d, and runs real PyTorchJobs."""

from __future__ import annotations

import json
from functools import partial

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kube_helpers import PYTORCHJOB, job_condition, poll, pytorchjob, running_pods
from spotrun_dev import fleet as fleet_mod
from spotrun_dev import paths
from spotrun_dev.cluster import ensure_fleet, fleet_spec_from_env


def test_control_plane_reports_pinned_release(api_client: client.ApiClient) -> None:
    info = client.VersionApi(api_client).get_code()
    assert info.git_version == paths.versions()["KUBE_VERSION"]


def test_scheduler_and_controller_manager_run_without_leader_election(
    api_client: client.ApiClient,
) -> None:
    """Single instances nobody restarts (kwok_config.SINGLE_INSTANCE): no Lease, so no
    missed renewal under load can make either exit and leave every new pod Pending."""
    coordination = client.CoordinationV1Api(api_client)
    leases = {x.metadata.name for x in coordination.list_namespaced_lease("kube-system").items}
    assert not leases & {"kube-scheduler", "kube-controller-manager"}, sorted(leases)


def test_fleet_looks_like_eks_spot_p4d(core: client.CoreV1Api, fleet: None) -> None:
    spec = fleet_spec_from_env()
    nodes = {
        n.metadata.name: n
        for n in core.list_node(label_selector=f"{fleet_mod.FLEET_LABEL}=true").items
    }
    assert sorted(nodes) == sorted(spec.node_names())
    spot = [
        n for n in nodes.values() if n.metadata.labels["eks.amazonaws.com/capacityType"] == "SPOT"
    ]
    on_demand = [
        n
        for n in nodes.values()
        if n.metadata.labels["eks.amazonaws.com/capacityType"] == "ON_DEMAND"
    ]
    assert len(spot) == spec.spot_nodes and len(on_demand) == spec.on_demand_nodes
    for node in spot:
        labels = node.metadata.labels
        assert labels["node.kubernetes.io/instance-type"] == "p4d.24xlarge"
        assert labels["karpenter.sh/capacity-type"] == "spot"
        assert labels["topology.kubernetes.io/zone"] in spec.zones
        assert node.status.allocatable["nvidia.com/gpu"] == "8"
        assert node.status.capacity["cpu"] == "96"
        assert node.status.capacity["memory"] == "1152Gi"
        assert [(t.key, t.effect) for t in node.spec.taints] == [("nvidia.com/gpu", "NoSchedule")]
        ready = {c.type: c.status for c in node.status.conditions}
        assert ready["Ready"] == "True"
    assert {n.metadata.labels["karpenter.sh/capacity-type"] for n in on_demand} == {"on-demand"}
    zones = {n.metadata.labels["topology.kubernetes.io/zone"] for n in spot}
    assert zones == set(spec.zones)


def test_a_node_registered_again_runs_pods_at_once(
    core: client.CoreV1Api, namespace: str, fleet: None
) -> None:
    """ensure_fleet puts a drained node (cordoned, tainted, labelled) back in place and
    creates a lost one again under the same name; kwok must play the next pod scheduled
    on either within seconds. Created again while the old node's Lease was still there,
    one node in eight ran nothing for 160-210 s (fleet_state._lease_released says why)."""
    spot = [n for n in fleet_spec_from_env().node_names() if n.startswith(fleet_mod.SPOT_PREFIX)]
    for i, name in enumerate(spot):
        old_uid = core.read_node(name).metadata.uid
        lost = i % 2 == 1
        if lost:
            core.delete_node(name, grace_period_seconds=0)
        else:  # what an NTH drain leaves: cordon, its taint and its label
            taint = {"key": "aws-node-termination-handler/spot-itn", "effect": "NoSchedule"}
            core.patch_node(name, {"spec": {"unschedulable": True}, "metadata": {
                "labels": {"aws-node-termination-handler/spot-itn": "true"}}})  # fmt: skip
            node = core.read_node(name)
            core.patch_node(name, {"spec": {"taints": [*node.spec.taints, taint]}})
        ensure_fleet(core)
        node = core.read_node(name)
        assert (node.metadata.uid != old_uid) == lost, name
        assert not node.spec.unschedulable and [t.key for t in node.spec.taints] == [
            fleet_mod.GPU_RESOURCE
        ]
        assert "aws-node-termination-handler/spot-itn" not in node.metadata.labels
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name=f"on-{name}", namespace=namespace),
            spec=client.V1PodSpec(
                node_selector={"kubernetes.io/hostname": name},
                tolerations=[client.V1Toleration(key="nvidia.com/gpu", operator="Exists")],
                containers=[client.V1Container(name="main", image="busybox")],
            ),
        )
        core.create_namespaced_pod(namespace, pod)
        poll(f"pod on the registered-again {name} to run", partial(_running, core, pod), 30)
        core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)


def _running(core: client.CoreV1Api, pod: client.V1Pod) -> bool:
    phase: str = core.read_namespaced_pod(pod.metadata.name, pod.metadata.namespace).status.phase
    return phase == "Running"


def test_pytorchjob_gang_runs_on_spot_nodes(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, namespace: str, fleet: None
) -> None:
    custom.create_namespaced_custom_object(
        *PYTORCHJOB[:2], namespace, PYTORCHJOB[2], pytorchjob("gang", workers=3)
    )
    pods = running_pods(core, namespace, "gang", 4)
    roles = sorted(p.metadata.labels["training.kubeflow.org/replica-type"] for p in pods)
    assert roles == ["master", "worker", "worker", "worker"]
    # 8 GPUs each: the real scheduler must put every rank on its own spot p4d.
    node_names = [p.spec.node_name for p in pods]
    assert len(set(node_names)) == 4
    for name in node_names:
        node = core.read_node(name)
        assert node.metadata.labels["eks.amazonaws.com/capacityType"] == "SPOT"
    for pod in pods:
        assert pod.spec.restart_policy == "Never"
        env = {e.name: e.value for e in pod.spec.containers[0].env or []}
        # Set by the real training operator for torch.distributed rendezvous.
        assert env["WORLD_SIZE"] == "4"
        assert env["MASTER_ADDR"] == "gang-master-0"
    poll(
        "PyTorchJob Running condition",
        lambda: job_condition(custom, namespace, "gang", "Running"),
        timeout=60,
    )


def test_pytorchjob_validation_webhook_is_live(
    custom: client.CustomObjectsApi, namespace: str
) -> None:
    """The apiserver calls the training operator's webhook, which rejects a bad job."""
    bad = pytorchjob("no-pytorch-container", workers=0)
    bad["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["name"] = (
        "trainer"
    )
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(*PYTORCHJOB[:2], namespace, PYTORCHJOB[2], bad)
    # An admission webhook denial is a 403 carrying the webhook's own message.
    assert err.value.status == 403
    message = json.loads(err.value.body)["message"]
    assert message.startswith(
        'admission webhook "validator.pytorchjob.training-operator.kubeflow.org" denied'
    )
    assert "must have at least one container with name pytorch" in message
