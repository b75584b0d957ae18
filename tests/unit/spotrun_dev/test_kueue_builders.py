"""The local cluster's Kueue objects, built without a cluster (tests/e2e/kueue runs them)."""

from __future__ import annotations

from pathlib import Path

import yaml
from kubernetes import client

from spotrun_dev import kueue


def _hook(path: str) -> dict[str, object]:
    return {
        "name": path.strip("/").replace("-", "."),
        "clientConfig": {"service": {"name": "webhook-service", "path": path}},
        "rules": [],
    }


def test_webhooks_kept_are_kueues_own_api_and_pytorchjob_on_loopback(tmp_path: Path) -> None:
    folder = tmp_path / "config" / "components" / "webhook"
    folder.mkdir(parents=True)
    docs = [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": kind,
            "metadata": {"name": "mutating-webhook-configuration"},
            "webhooks": [
                _hook(f"/{verb}-kubeflow-org-v1-pytorchjob"),
                _hook(f"/{verb}-kueue-x-k8s-io-v1beta1-clusterqueue"),
                _hook(f"/{verb}--v1-pod"),
                _hook(f"/{verb}-batch-v1-job"),
            ],
        }
        for kind, verb in (
            ("MutatingWebhookConfiguration", "mutate"),
            ("ValidatingWebhookConfiguration", "validate"),
        )
    ]
    (folder / "manifests.yaml").write_text(yaml.safe_dump_all(docs))

    out = kueue.webhook_configurations(tmp_path, 4443, "Q0E=")

    assert [d["metadata"]["name"] for d in out] == [
        "kueue-mutating-webhook-configuration",
        "kueue-validating-webhook-configuration",
    ]
    for doc in out:
        urls = [h["clientConfig"]["url"] for h in doc["webhooks"]]
        assert len(urls) == 2 and all(u.startswith("https://127.0.0.1:4443/") for u in urls)
        assert not any(u.endswith(("-v1-pod", "-v1-job")) for u in urls)
        assert all(h["clientConfig"]["caBundle"] == "Q0E=" for h in doc["webhooks"])


def test_configuration_manages_only_labelled_pytorchjobs_on_loopback() -> None:
    cfg = kueue.configuration(4443, 8081, 8443)
    assert cfg["integrations"] == {"frameworks": ["kubeflow.org/pytorchjob"]}
    assert cfg["manageJobsWithoutQueueName"] is False
    assert cfg["internalCertManagement"] == {"enable": False}
    assert cfg["leaderElection"] == {"leaderElect": False}
    assert cfg["webhook"]["port"] == 4443 and cfg["webhook"]["host"] == "127.0.0.1"
    assert cfg["metrics"]["bindAddress"] == "127.0.0.1:8443"
    assert cfg["health"]["healthProbeBindAddress"] == "127.0.0.1:8081"


def _node(gpus: str, cpu: str, memory: str) -> client.V1Node:
    alloc = {"nvidia.com/gpu": gpus, "cpu": cpu, "memory": memory}
    return client.V1Node(status=client.V1NodeStatus(allocatable=alloc))


def test_the_fleet_queue_holds_what_the_spot_nodes_allocate() -> None:
    nodes = [_node("8", "96", "1152Gi"), _node("8", "95500m", "1Ti"), client.V1Node()]
    nodes[2].status = client.V1NodeStatus(allocatable={"cpu": "4"})  # no GPUs yet
    queue = kueue.fleet_queue(nodes)

    assert queue["metadata"]["name"] == "spot-fleet"
    assert queue["spec"]["preemption"] == {"withinClusterQueue": "LowerPriority"}
    (group,) = queue["spec"]["resourceGroups"]
    (flavor,) = group["flavors"]
    assert flavor["name"] == "spot"
    quota = {r["name"]: r["nominalQuota"] for r in flavor["resources"]}
    assert quota == {"nvidia.com/gpu": 16, "cpu": "195", "memory": str(2176 * 2**30)}
    assert sorted(group["coveredResources"]) == sorted(quota)


def test_a_local_queue_defaults_to_the_fleet_queue() -> None:
    lq = kueue.local_queue("team-a")
    assert lq["metadata"] == {"name": "spot-fleet", "namespace": "team-a"}
    assert lq["spec"] == {"clusterQueue": "spot-fleet"}
