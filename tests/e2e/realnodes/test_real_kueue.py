"""A Kueue preemption, real: the chart's operator pod, the real trainer image on a real
node, the real Kueue. A higher-priority workload takes the run's quota; Kueue suspends the
run's PyTorchJob, the training operator deletes its pods with their grace period, the
trainer saves at the next step boundary and exits 143; spotrun records a queue-preemption
(no budget spent), runs nothing while the other workload holds the quota, and the next
attempt resumes from exactly the checkpoint the preempted trainer wrote."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from spotrun_dev import chart_install, images, kueue, real_story
from spotrun_dev.node_config import REAL_NODE_LABEL, RealNode
from spotrun_dev.real_story import REAL_TOLERATIONS, TR, Story
from spotrun_dev.waiting import wait_for

PYTORCHJOB = ("kubeflow.org", "v1", "pytorchjobs")
KUEUE = ("kueue.x-k8s.io", "v1beta1")
ARGS = (
    "--max-steps=160",
    "--batch-size=8",
    "--model.n-layer=2",
    "--model.n-embd=32",
    "--model.seq-len=16",
    "--data.num-samples=512",
    "--report.log-every=10",
    "--report.progress-interval-seconds=0.5",
    "--fault.step-delay-seconds=0.2",
)


@pytest.fixture
def one_node_queue(api_client: client.ApiClient, namespace: str) -> Iterator[str]:
    """A ClusterQueue of 8 GPUs (one real p4d) and LocalQueue ``team``."""
    name = f"cq-{namespace}"[:63]
    kueue.apply(api_client, kueue.cluster_queue(name, gpus=8))
    kueue.apply(api_client, kueue.local_queue(namespace, "team", name))
    yield "team"
    try:
        client.CustomObjectsApi(api_client).delete_cluster_custom_object(
            *KUEUE, "clusterqueues", name
        )
    except ApiException as exc:
        if exc.status != 404:
            raise


def urgent_job(image: str, queue: str) -> dict[str, Any]:
    """A plain high-priority PyTorchJob asking the whole quota for a few seconds."""
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {
            "name": "urgent",
            "labels": {
                "kueue.x-k8s.io/queue-name": queue,
                "kueue.x-k8s.io/priority-class": "high",
            },
        },
        "spec": {
            "pytorchReplicaSpecs": {
                "Master": {
                    "replicas": 1,
                    "restartPolicy": "Never",
                    "template": {
                        "spec": {
                            "nodeSelector": {REAL_NODE_LABEL: "true"},
                            "tolerations": copy.deepcopy(REAL_TOLERATIONS),
                            "containers": [
                                {
                                    "name": "pytorch",
                                    "image": image,
                                    "imagePullPolicy": "Never",
                                    "command": ["python", "-c", "import time; time.sleep(20)"],
                                    "resources": {"limits": {"nvidia.com/gpu": "8"}},
                                }
                            ],
                        }
                    },
                }
            }
        },
    }


@pytest.mark.timeout(900)
def test_kueue_preemption_saves_and_the_next_attempt_resumes_from_it(
    api_client: client.ApiClient,
    namespace: str,
    real_nodes: list[RealNode],
    shared_claims: dict[str, Path],
    operator_release: chart_install.Release,
    built_images: dict[str, images.ImageArchive],
    one_node_queue: str,
) -> None:
    image = built_images["trainer"].ref
    story = Story(api_client, namespace, len(real_nodes))
    story.exits.start()
    body = real_story.trainer_run("run", image, "ckpt", ARGS)
    body["spec"].update(nodes=1, queueName=one_node_queue)
    story.custom.create_namespaced_custom_object(*TR[:2], namespace, TR[2], body)
    story.wait_training("run", 1, 20)

    story.custom.create_namespaced_custom_object(
        *PYTORCHJOB[:2], namespace, PYTORCHJOB[2], urgent_job(image, one_node_queue)
    )
    st = story.wait_status(
        "run", "a queue preemption", lambda s: int(s.get("queuePreemptions") or 0) >= 1, 180
    )
    entry = st["attempts"][0]
    assert (entry["outcome"], entry["reason"]) == ("QueuePreempted", "queue-preemption")
    assert (int(st.get("preemptions") or 0), int(st.get("failures") or 0)) == (0, 0)

    # The trainer saved on SIGTERM and exited 143; nothing of the run runs meanwhile.
    wait_for("attempt 1's trainer to exit", lambda: story.exits.of("run", 1) != [], timeout=120)
    assert story.exits.of("run", 1) == [143]
    stopped = story.progress("run")
    assert stopped["attempt"] == 1, stopped
    urgent_ran = False

    def urgent_running_alone() -> bool:
        nonlocal urgent_ran
        pods = story.core.list_namespaced_pod(
            namespace, label_selector="training.kubeflow.org/job-name=urgent"
        ).items
        urgent_ran = urgent_ran or any(p.status.phase == "Running" for p in pods)
        assert not story.pods("run", 2), "attempt 2 ran while the urgent job held the quota"
        return urgent_ran

    wait_for("the urgent job to run", urgent_running_alone, timeout=120, interval=0.5)

    # The urgent job ends; Kueue readmits the run; attempt 2 resumes from that checkpoint.
    story.wait_training("run", 2, int(stopped["step"]) + 5)
    assert story.resumed_from("run", 2) == int(stopped["step"]), "steps were lost"
    run = story.wait_status("run", "the end", lambda s: s.get("phase") == "Succeeded", 600)
    story.exits.stop()
    assert (int(run.get("preemptions") or 0), int(run.get("failures") or 0)) == (0, 0)
    assert int(run["queuePreemptions"]) == 1
