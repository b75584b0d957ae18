"""The operator's edges without a cluster: the per-run collector, kopf's credentials from
the client configuration, the pods a dry run checks, refusals as verdicts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from spotrun_operator import handlers
from spotrun_operator.kubeio import connection
from spotrun_operator.kubeio.apiserver import (
    credentials,
    message_of,
    raw_template_job,
    rbac_denied,
    refused,
    replica_pods,
)
from spotrun_operator.model.plan import Rejected, RunGauges, RunRef
from spotrun_operator.telemetry.metrics import Metrics, RunCollector, RunState
from spotrun_operator.watching.memory import Memory


def test_the_collector_renders_a_snapshot_at_scrape_time() -> None:
    now = [1000.0]
    runs = RunCollector(clock=lambda: now[0])
    reg = CollectorRegistry()
    reg.register(runs)
    runs.update("ml", "a", RunState("Running", 900.0, RunGauges(spot_usd=3.0)))
    runs.update("ml", "b", RunState("Suspended", 900.0, None))
    labels = {"namespace": "ml", "run": "a"}
    assert reg.get_sample_value("spotrun_checkpoint_age_seconds", labels) == 100.0
    now[0] = 1060.0  # no reconcile in between: the age still grows
    assert reg.get_sample_value("spotrun_checkpoint_age_seconds", labels) == 160.0
    assert reg.get_sample_value("spotrun_runs", {"phase": "Running"}) == 1
    assert reg.get_sample_value("spotrun_runs", {"phase": "Suspended"}) == 1
    # A run that checkpoints nothing (Suspended) has no age; no figures yet, no cost.
    b = {"namespace": "ml", "run": "b"}
    assert reg.get_sample_value("spotrun_checkpoint_age_seconds", b) is None
    assert reg.get_sample_value("spotrun_run_cost_usd", {**b, "capacity": "spot"}) is None
    # A reconcile without figures keeps the last ones.
    runs.update("ml", "a", RunState("Recovering", None, None))
    assert reg.get_sample_value("spotrun_run_cost_usd", {**labels, "capacity": "spot"}) == 3.0
    runs.update("ml", "a", None)
    assert reg.get_sample_value("spotrun_run_cost_usd", {**labels, "capacity": "spot"}) is None
    assert reg.get_sample_value("spotrun_runs", {"phase": "Recovering"}) == 0


def test_two_collectors_of_the_same_names_collide_on_one_registry() -> None:
    reg = CollectorRegistry()
    Metrics(reg)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        reg.register(RunCollector())


def test_kopf_logs_in_with_the_clients_own_configuration() -> None:
    cfg = client.Configuration(host="https://api.example:6443")
    cfg.api_key = {"BearerToken": "abc"}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    cfg.ssl_ca_cert = "/ca.pem"
    info = handlers.connection_info(cfg)
    assert (info.server, info.scheme, info.token, info.ca_path) == (
        "https://api.example:6443",
        "Bearer",
        "abc",
        "/ca.pem",
    )
    assert info.insecure is False and info.username is None
    cfg.verify_ssl = False
    cfg.api_key = {}
    cfg.cert_file, cfg.key_file = "/c.pem", "/k.pem"
    got = credentials(cfg)
    assert got["insecure"] and got["token"] is None and got["scheme"] is None
    assert (got["certificate_path"], got["private_key_path"]) == ("/c.pem", "/k.pem")


def test_a_dry_run_checks_one_pod_per_replica_type() -> None:
    ref = RunRef(name="r", namespace="ml", uid="u", generation=1)
    template = {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c"}]}}
    job = {
        "metadata": {"name": f"{ref.name}-a1", "namespace": "ml"},
        "spec": {
            "pytorchReplicaSpecs": {
                "Worker": {"replicas": 3, "template": template},
                "Master": {"replicas": 1, "template": template},
            }
        },
    }
    pods = replica_pods(job)
    assert [p["metadata"]["name"] for p in pods] == ["r-a1-master-0", "r-a1-worker-0"]
    assert pods[0]["metadata"]["labels"] == {"a": "b"}
    assert pods[0]["spec"] == template["spec"] and pods[0]["metadata"]["namespace"] == "ml"


def _error(status: int, message: str) -> ApiException:
    exc = ApiException(status=status, reason="x")
    exc.body = json.dumps({"kind": "Status", "message": message})
    return exc


def test_refusals_are_verdicts_and_rbac_is_not() -> None:
    assert refused(_error(422, 'PyTorchJob "r-a1" is invalid: spec.x: Invalid value'))
    assert refused(_error(400, "cannot be handled as a Pod"))
    assert refused(_error(403, 'admission webhook "v" denied the request: image required'))
    assert refused(_error(403, 'pods "p" is forbidden: violates PodSecurity "restricted"'))
    rbac = 'pods is forbidden: User "system:serviceaccount:s:o" cannot create resource "pods"'
    assert not refused(_error(403, rbac)) and rbac_denied(_error(403, rbac))
    quota = 'pods "p" is forbidden: exceeded quota: gpu, requested: nvidia.com/gpu=8'
    assert not refused(_error(403, quota)) and not rbac_denied(_error(403, quota))
    assert not rbac_denied(_error(422, "spec.x: Invalid value"))
    assert not refused(_error(409, "already exists")) and not refused(_error(500, "boom"))
    assert message_of(_error(422, "spec.x: Invalid value")) == "spec.x: Invalid value"
    assert message_of(ApiException(status=502, reason="Bad Gateway")) == "502 Bad Gateway"


def test_the_raw_template_job_holds_what_the_user_wrote() -> None:
    run: dict[str, Any] = {
        "metadata": {"name": "r", "namespace": "ml"},
        "spec": {"podTemplate": {"spec": {"tolerations": "all"}}, "env": [{"name": "A"}]},
    }
    job = raw_template_job(run)
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["tolerations"] == "all"
    assert pod["containers"][-1]["env"] == [{"name": "A"}]
    assert run["spec"]["podTemplate"] == {"spec": {"tolerations": "all"}}  # not mutated


def test_a_rejection_holds_for_its_generation_only() -> None:
    m = Memory()
    run = {"metadata": {"namespace": "ml", "name": "r", "uid": "u", "generation": 2}}
    assert m.rejection(run) is None
    why = Rejected("PyTorchJob", "r-a1", "spec.x: Invalid value")
    m.reject(run, why)
    assert m.rejection(run) == why
    assert m.rejection({"metadata": {**run["metadata"], "generation": 3}}) is None
    assert m.rejection({"metadata": {**run["metadata"], "uid": "v"}}) is None
    m.forget_run("ml", "r")
    assert m.rejection(run) is None


def test_the_client_keeps_a_connection_per_calling_thread(tmp_path: Any) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    default = connection.load_api_client(str(kubeconfig))
    assert default.configuration.host == "https://127.0.0.1:6443"
    assert default.user_agent.startswith("spotrun-operator/")
    size = default.configuration.connection_pool_maxsize
    wide = connection.load_api_client(str(kubeconfig), connections=size + 10)
    assert wide.configuration.connection_pool_maxsize == size + 10
    assert wide.rest_client.pool_manager.connection_pool_kw["maxsize"] == size + 10
    # Never fewer than the client's own default.
    assert (
        connection.load_api_client(
            str(kubeconfig), connections=1
        ).configuration.connection_pool_maxsize
        == size
    )
