from __future__ import annotations

from pathlib import Path

import yaml

from spotrun_dev import kwok_config


def _fake_kwok_src(tmp_path: Path) -> Path:
    for rel in (*kwok_config._NODE_STAGES, *kwok_config._POD_STAGES):
        name = Path(rel).stem
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kwok.x-k8s.io/v1alpha1",
                    "kind": "Stage",
                    "metadata": {"name": name},
                    "spec": {
                        "selector": {"matchExpressions": [{"key": ".x", "operator": "Exists"}]}
                    },
                }
            )
        )
    return tmp_path


def test_simulated_pods_are_excluded_from_every_pod_stage_but_delete(tmp_path: Path) -> None:
    stages = {s["metadata"]["name"]: s for s in kwok_config.load_stages(_fake_kwok_src(tmp_path))}
    assert set(stages) == {
        "node-initialize",
        "node-heartbeat-with-lease",
        "pod-ready",
        "pod-complete",
        "pod-delete",
    }
    for name in ("pod-ready", "pod-complete"):
        exprs = stages[name]["spec"]["selector"]["matchExpressions"]
        assert exprs[-1] == {
            "key": '.metadata.annotations["spotrun.dev/simulated"]',
            "operator": "DoesNotExist",
        }
    assert len(stages["pod-delete"]["spec"]["selector"]["matchExpressions"]) == 1
    assert len(stages["node-initialize"]["spec"]["selector"]["matchExpressions"]) == 1


def test_config_uses_local_binaries_and_rbac(tmp_path: Path) -> None:
    docs = kwok_config.build_kwokctl_config(tmp_path, "v1.36.3", [])
    opts = docs[0]["options"]
    assert docs[0]["kind"] == "KwokctlConfiguration"
    assert opts["runtime"] == "binary" and opts["kubeAuthorization"] is True
    for key in (
        "kubeApiserverBinary",
        "kubeControllerManagerBinary",
        "kubeSchedulerBinary",
        "kwokControllerBinary",
        "etcdBinary",
        "kubectlBinary",
    ):
        assert opts[key].startswith(str(tmp_path)), key


def test_kwok_gets_enough_workers_for_a_1500_node_fleet(tmp_path: Path) -> None:
    """kwok's default of 4 lease workers let 1,500 fake nodes' Leases expire under load."""
    docs = kwok_config.build_kwokctl_config(tmp_path, "v1.36.3", [])
    kwok = [d for d in docs if d["kind"] == "KwokConfiguration"]
    assert len(kwok) == 1 and kwok[0]["apiVersion"] == "config.kwok.x-k8s.io/v1alpha1"
    opts = kwok[0]["options"]
    lease_seconds = docs[0]["options"]["nodeLeaseDurationSeconds"]
    renewals_per_second = 1500 / (lease_seconds / 4)
    # Each worker may then take 200 ms a renewal and still keep up.
    assert opts["nodeLeaseParallelism"] >= renewals_per_second * 0.2
    assert opts["nodePlayStageParallelism"] > 4 and opts["podPlayStageParallelism"] > 4
