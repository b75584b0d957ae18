"""Pure builders: names, owner references, the PyTorchJob and its pod template."""

from __future__ import annotations

from typing import Any

import pytest
from controller_fakes import REF, spec

from spotrun_api.naming import parse_job_name
from spotrun_api.spec import parse_spec
from spotrun_operator.facts.common import parse_duration
from spotrun_operator.model import builders as b


def job(**over: Any) -> dict[str, Any]:
    return b.build_pytorchjob(
        REF,
        parse_spec(spec(**over)),
        attempt=3,
        capacity_type="spot",
        interval_seconds=900,
        avoid_nodes=["spot-p4d-1"],
    )


def template(body: dict[str, Any], replica: str = "Master") -> dict[str, Any]:
    return dict(body["spec"]["pytorchReplicaSpecs"][replica]["template"])


def test_job_name_and_gang_shape() -> None:
    body = job(nodes=4)
    assert body["metadata"]["name"] == "llm-a3"
    assert body["metadata"]["ownerReferences"] == [b.owner_reference(REF)]
    assert body["metadata"]["labels"]["spotrun.dev/attempt"] == "3"
    replicas = body["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 3
    assert {r["restartPolicy"] for r in replicas.values()} == {"Never"}
    assert "backoffLimit" not in body["spec"]["runPolicy"]
    assert "Worker" not in job(nodes=1)["spec"]["pytorchReplicaSpecs"]


def test_pod_template_carries_the_contract() -> None:
    tpl = template(job())
    pod = tpl["spec"]
    c = pod["containers"][0]
    assert c["name"] == "pytorch" and c["image"] == "spotrun/trainer:dev"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["SPOTRUN_RUN"] == "llm" and env["SPOTRUN_NAMESPACE"] == "ml"
    assert env["SPOTRUN_ATTEMPT"] == "3" and env["SPOTRUN_CHECKPOINT_DIR"] == "/checkpoints"
    assert env["SPOTRUN_CHECKPOINT_INTERVAL_SECONDS"] == "900"
    assert env["SPOTRUN_CHECKPOINT_KEEP"] == "3" and env["SPOTRUN_METRICS_PORT"] == "9400"
    assert "SPOTRUN_S3_URI" not in env
    assert {"name": "spotrun-checkpoints", "mountPath": "/checkpoints"} in c["volumeMounts"]
    assert pod["volumes"] == [
        {"name": "spotrun-checkpoints", "persistentVolumeClaim": {"claimName": "ckpt"}}
    ]
    assert pod["restartPolicy"] == "Never" and pod["terminationGracePeriodSeconds"] == 110
    assert pod["serviceAccountName"] == "llm-trainer"
    assert b.GPU_TOLERATION in pod["tolerations"]
    assert tpl["metadata"]["labels"]["spotrun.dev/run"] == "llm"


def test_affinity_targets_capacity_and_avoids_interrupted_nodes() -> None:
    terms = template(job())["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert len(terms) == 2  # EKS managed node groups OR Karpenter
    eks, karpenter = (t["matchExpressions"] for t in terms)
    assert eks[0] == {"key": "eks.amazonaws.com/capacityType", "operator": "In", "values": ["SPOT"]}
    assert karpenter[0] == {
        "key": "karpenter.sh/capacity-type",
        "operator": "In",
        "values": ["spot"],
    }
    for exprs in (eks, karpenter):
        assert {
            "key": "node.kubernetes.io/instance-type",
            "operator": "In",
            "values": ["p4d.24xlarge"],
        } in exprs
        assert {
            "key": "kubernetes.io/hostname",
            "operator": "NotIn",
            "values": ["spot-p4d-1"],
        } in exprs


def test_user_pod_template_is_merged_not_replaced() -> None:
    user = {
        "metadata": {"labels": {"team": "nlp"}, "annotations": {"a": "b"}},
        "spec": {
            "nodeSelector": {"tier": "training"},
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "topology.kubernetes.io/zone",
                                        "operator": "In",
                                        "values": ["us-east-1a"],
                                    }
                                ]
                            }
                        ]
                    }
                }
            },
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [
                {
                    "name": "pytorch",
                    "env": [
                        {"name": "HF_HOME", "value": "/cache"},
                        {"name": "SPOTRUN_ATTEMPT", "value": "99"},
                    ],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    "resources": {"limits": {"memory": "100Gi"}},
                },
                {"name": "sidecar", "image": "busybox"},
            ],
            "terminationGracePeriodSeconds": 5,
        },
    }
    tpl = template(job(podTemplate=user, resources={"requests": {"cpu": "90"}}))
    pod = tpl["spec"]
    assert tpl["metadata"]["labels"]["team"] == "nlp" and tpl["metadata"]["annotations"]
    assert pod["nodeSelector"] == {"tier": "training"}
    assert len(pod["tolerations"]) == 2
    assert [c["name"] for c in pod["containers"]] == ["pytorch", "sidecar"]
    c = pod["containers"][0]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["HF_HOME"] == "/cache" and env["SPOTRUN_ATTEMPT"] == "3"
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/data", "/checkpoints"}
    assert c["resources"] == {
        "requests": {"cpu": "90"},
        "limits": {"memory": "100Gi", "nvidia.com/gpu": "8"},
    }
    assert {v["name"] for v in pod["volumes"]} == {"data", "spotrun-checkpoints"}
    assert pod["terminationGracePeriodSeconds"] == 110  # the notice window is ours
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert len(terms) == 2 and all(
        t["matchExpressions"][0]["key"] == "topology.kubernetes.io/zone" for t in terms
    )


def test_pvc_and_rbac() -> None:
    s = parse_spec(spec(checkpoint={"volume": {"size": "500Gi", "storageClassName": "efs"}}))
    pvc = b.build_pvc(REF, s)
    assert pvc is not None and pvc["metadata"]["name"] == "llm-checkpoints"
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "storageClassName": "efs",
        "resources": {"requests": {"storage": "500Gi"}},
    }
    assert b.claim_name(REF, s) == "llm-checkpoints"
    assert b.build_pvc(REF, parse_spec(spec())) is None
    role = b.build_role(REF)
    assert role["rules"] == [
        {
            "apiGroups": ["spotrun.dev"],
            "resources": ["trainingruns/status"],
            "resourceNames": ["llm"],
            "verbs": ["get", "patch"],
        }
    ]
    binding = b.build_role_binding(REF)
    assert binding["subjects"][0]["name"] == b.build_service_account(REF)["metadata"]["name"]


def test_on_demand_and_s3() -> None:
    s = parse_spec(spec(checkpoint={"volume": {"claimName": "c"}, "s3Uri": "s3://b/p"}))
    body = b.build_pytorchjob(REF, s, attempt=1, capacity_type="on-demand", interval_seconds=60)
    pod = template(body)["spec"]
    exprs = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchExpressions"]
    assert exprs[0]["values"] == ["ON_DEMAND"]
    assert not any(e["operator"] == "NotIn" for e in exprs)
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["SPOTRUN_S3_URI"] == "s3://b/p"


def test_referenced_objects() -> None:
    tpl = {
        "spec": {
            "volumes": [
                {"name": "s", "secret": {"secretName": "tok"}},
                {"name": "o", "secret": {"secretName": "opt", "optional": True}},
                {"name": "c", "configMap": {"name": "cfg"}},
            ],
            "containers": [
                {
                    "name": "pytorch",
                    "envFrom": [{"secretRef": {"name": "env"}}],
                    "env": [
                        {"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}
                    ],
                }
            ],
        }
    }
    refs = b.referenced_objects(parse_spec(spec(podTemplate=tpl)), REF)
    assert refs == [
        ("ConfigMap", "cfg"),
        ("ConfigMap", "cm"),
        ("PersistentVolumeClaim", "ckpt"),
        ("Secret", "env"),
        ("Secret", "tok"),
    ]


def test_names_and_durations() -> None:
    assert parse_job_name("llm", "llm-a12") == 12
    assert parse_job_name("llm", "llm-a0") is None
    assert parse_job_name("llm", "llm-x-a2") is None
    assert parse_job_name("llm-x", "llm-x-a2") == 2
    assert parse_duration("1h30m") == 5400 and parse_duration("90s") == 90
    with pytest.raises(ValueError):
        parse_duration("15 minutes")
    with pytest.raises(ValueError):
        parse_spec(spec(checkpoint={"volume": {}}))


def test_pods_are_protected_from_voluntary_disruption_unless_turned_off() -> None:
    """Karpenter consolidation/drift and Cluster Autoscaler scale-down wait for a gang whose
    pods carry these (kubernetes-sigs/karpenter pkg/apis/v1/labels.go; kubernetes/autoscaler
    cluster-autoscaler/utils/drain/drain.go); a user's own value wins."""
    for replica in ("Master", "Worker"):
        meta = template(job(), replica)["metadata"]
        assert meta["annotations"] == {
            "karpenter.sh/do-not-disrupt": "true",
            "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
        }
    mine = {"metadata": {"annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "true"}}}
    meta = template(job(podTemplate=mine))["metadata"]
    assert meta["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "true"
    assert meta["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
    off = template(job(protectFromVoluntaryDisruption=False))["metadata"]
    assert "annotations" not in off


RESTRICTED_CONTAINER = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def test_pods_are_restricted_by_default() -> None:
    """Pod Security Standards "restricted": a non-root uid with the checkpoint volume's
    group, RuntimeDefault seccomp, every capability dropped, no privilege escalation."""
    pod = template(job())["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["containers"][0]["securityContext"] == RESTRICTED_CONTAINER
    # The defaults are copies: one template's edit never leaks into the next.
    pod["securityContext"]["runAsUser"] = 0
    pod["containers"][0]["securityContext"]["capabilities"]["drop"].clear()
    again = template(job())["spec"]
    assert again["securityContext"]["runAsUser"] == 65532
    assert again["containers"][0]["securityContext"] == RESTRICTED_CONTAINER


def test_user_security_context_fields_win_one_by_one() -> None:
    user = {
        "spec": {
            "securityContext": {"runAsUser": 1000, "fsGroup": 2000},
            "containers": [
                {"name": "pytorch", "securityContext": {"readOnlyRootFilesystem": True}},
                {"name": "sidecar", "image": "busybox", "securityContext": {"runAsUser": 7}},
            ],
        }
    }
    pod = template(job(podTemplate=user), "Worker")["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 65532,
        "fsGroup": 2000,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    trainer, sidecar = pod["containers"]
    assert trainer["securityContext"] == {**RESTRICTED_CONTAINER, "readOnlyRootFilesystem": True}
    # The user's other containers are theirs: spotrun adds nothing to them.
    assert sidecar["securityContext"] == {"runAsUser": 7}
    # A user who needs root says so, field by field (and cannot run in a restricted namespace).
    root = {"spec": {"securityContext": {"runAsNonRoot": False, "runAsUser": 0}}}
    pod = template(job(podTemplate=root))["spec"]
    assert pod["securityContext"]["runAsUser"] == 0
    assert pod["securityContext"]["runAsNonRoot"] is False
