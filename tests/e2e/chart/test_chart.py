"""The Helm chart with the real helm binary: lint, render, schema, security, RBAC."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartkit import (
    ALERTS_FILE,
    ALL_FEATURES_VALUES,
    CHART_DIR,
    CRD_SOURCE,
    DASHBOARDS_DIR,
    find,
    helm_template,
    one,
    render,
    run,
)

pytestmark = pytest.mark.usefixtures("helm")

ALL = ("-f", str(ALL_FEATURES_VALUES))
MONITORING_APIS = (
    "--api-versions=monitoring.coreos.com/v1/ServiceMonitor",
    "--api-versions=monitoring.coreos.com/v1/PodMonitor",
    "--api-versions=monitoring.coreos.com/v1/PrometheusRule",
)


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


# ------------------------------------------------------------------------------- lint
@pytest.mark.parametrize("args", [(), ALL], ids=["defaults", "all-features"])
def test_lint_is_clean(helm: Path, args: tuple[str, ...]) -> None:
    result = run([str(helm), "lint", "--strict", str(CHART_DIR), *args])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == "0.1.0"
    assert chart["name"] == "spotrun"


# ----------------------------------------------------------------------------- render
def test_defaults_render_the_core_objects_only() -> None:
    docs = render()
    expected = [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "PriorityClass",  # spotrun-spare, for warm spares (spares.priorityClass, the default)
        "Role",  # the leader election Lease (leaderElection.enabled, the default)
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    assert kinds(docs) == sorted(expected)


def test_all_features_render_every_object() -> None:
    docs = render(*ALL)
    assert kinds(docs) == sorted(
        ["ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount"]
        + ["Role", "RoleBinding"] * 3  # two watched namespaces, the Lease's
        + ["ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap", "ConfigMap"]
        + ["CustomResourceDefinition", "PriorityClass"]
    )


@pytest.mark.parametrize(
    ("kind", "key"),
    [
        ("ServiceMonitor", "serviceMonitor"),
        ("PodMonitor", "podMonitor"),
        ("PrometheusRule", "prometheusRule"),
    ],
)
def test_monitoring_objects_follow_enabled_and_the_cluster_api(kind: str, key: str) -> None:
    # "auto" (the default) follows the cluster; true/false force it.
    assert not find(render(), kind)
    assert len(find(render(*MONITORING_APIS), kind)) == 1
    assert not find(render(*MONITORING_APIS, f"--set={key}.enabled=false"), kind)
    assert len(find(render(f"--set={key}.enabled=true"), kind)) == 1


def test_deployment_has_every_security_setting() -> None:
    for args in ((), ALL):
        deployment = one(render(*args), "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 65532
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (container,) = pod["containers"]
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["privileged"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["resources"]["requests"]["cpu"]
        assert container["resources"]["requests"]["memory"]
        assert container["resources"]["limits"]["memory"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        probe = container["livenessProbe"]["httpGet"]
        assert probe["path"] == "/healthz"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert probe["port"] == "health" and ports["health"] == 8080
        assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]
        assert f"--metrics-port={ports['metrics']}" in container["args"]
        assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_image_defaults_to_app_version_and_honours_digest() -> None:
    (container,) = one(render(), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/spotrun/operator:0.1.0"
    (container,) = one(render(*ALL), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert re.fullmatch(r"ghcr\.io/spotrun/operator@sha256:[0-9a-f]{64}", container["image"])


def test_namespaced_mode_passes_one_flag_per_namespace() -> None:
    (container,) = one(render(*ALL), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [a for a in container["args"] if a.startswith("--namespace")] == [
        "--namespace=ml-team",
        "--namespace=research",
    ]
    assert "--all-namespaces" not in container["args"]
    (container,) = one(render(), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert not [a for a in container["args"] if a.startswith("--namespace")]
    assert "--all-namespaces" in container["args"]


def test_pod_labels_have_no_duplicates_and_keep_the_selector() -> None:
    deployment = one(render(*ALL), "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for key, value in deployment["spec"]["selector"]["matchLabels"].items():
        assert labels[key] == value
    assert labels["example.com/tier"] == "control"
    # yaml.safe_load keeps the last duplicate silently; count the keys in the raw text.
    text = helm_template(*ALL, "--show-only=templates/deployment.yaml").stdout
    block = text.split("template:\n", 1)[1].split("    spec:", 1)[0]
    keys = re.findall(r"^\s+([\w./-]+):", block.split("labels:", 1)[1], re.M)
    assert len(keys) == len(set(keys)), keys


# ------------------------------------------------------------------------------- CRDs
def test_rendered_crd_is_the_single_source_plus_release_metadata() -> None:
    source = yaml.safe_load(CRD_SOURCE.read_text())
    crd = one(render(), "CustomResourceDefinition")
    meta = crd["metadata"]
    assert meta["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    for key, value in source["metadata"].get("labels", {}).items():
        assert meta["labels"][key] == value
    ignored = ("labels", "annotations")
    stripped = {**crd, "metadata": {k: v for k, v in meta.items() if k not in ignored}}
    source_meta = {k: v for k, v in source["metadata"].items() if k not in ignored}
    assert stripped == {
        **source,
        "metadata": source_meta,
    }  # nothing lost in fromYaml/toYaml (numbers, CEL strings)


def test_crd_switches() -> None:
    assert not find(render("--set=crds.install=false"), "CustomResourceDefinition")
    crd = one(render("--set=crds.keep=false"), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})


# -------------------------------------------------------------------- monitoring objects
def test_service_monitor_sets_the_job_the_alerts_expect() -> None:
    docs = render(*ALL)
    service = one(docs, "Service")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "spotrun-operator"
    for key, value in monitor["spec"]["selector"]["matchLabels"].items():
        assert service["metadata"]["labels"][key] == value
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    deployment = one(docs, "Deployment")
    for key, value in service["spec"]["selector"].items():
        assert deployment["spec"]["template"]["metadata"]["labels"][key] == value
    assert 'job="spotrun-operator"' in ALERTS_FILE.read_text()


def test_pod_monitor_selects_rank_zero_and_labels_run_and_attempt() -> None:
    monitor = one(render(*ALL), "PodMonitor")
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"matchNames": ["ml-team", "research"]}
    assert spec["selector"]["matchLabels"] == {"training.kubeflow.org/replica-type": "master"}
    exists = {"key": "spotrun.dev/run", "operator": "Exists"}
    assert spec["selector"]["matchExpressions"] == [exists]
    endpoint = spec["podMetricsEndpoints"][0]
    assert endpoint["port"] == "spotrun-metrics"  # builders.METRICS_PORT_NAME
    relabel = {r["targetLabel"]: r for r in endpoint["relabelings"]}
    assert relabel["run"]["sourceLabels"] == ["__meta_kubernetes_pod_label_spotrun_dev_run"]
    assert re.fullmatch(relabel["attempt"]["regex"], "llama-ft-a12")
    assert relabel["job"]["replacement"] == "spotrun-trainer"
    clusterwide = one(render("--set=podMonitor.enabled=true"), "PodMonitor")
    assert clusterwide["spec"]["namespaceSelector"] == {"any": True}


def test_prometheus_rule_is_the_rules_file() -> None:
    rule = one(render(*ALL), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(ALERTS_FILE.read_text())


def test_dashboards_are_configmaps_for_the_grafana_sidecar() -> None:
    maps = find(render(*ALL), "ConfigMap")
    sources = {p.name: json.loads(p.read_text()) for p in DASHBOARDS_DIR.glob("*.json")}
    assert len(maps) == len(sources) == 2
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["namespace"] == "monitoring"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "spotrun"}
        ((name, body),) = cm["data"].items()
        assert json.loads(body) == sources[name]


# ---------------------------------------------------------------------------- schema
@pytest.mark.parametrize(
    ("flag", "field", "why"),
    [
        ("--set=replicas=two", "/replicas", "want integer"),
        ("--set=replicas=-1", "/replicas", "minimum"),
        ("--set=leaderElection.enabled=yes", "/leaderElection/enabled", "want boolean"),
        ("--set=leaderElection.leaseDurationSeconds=1", "/leaderElection/leaseDuration", "minimum"),
        (
            "--set=leaderElection.retryPeriodSeconds=0",
            "/leaderElection/retryPeriod",
            "exclusiveMin",
        ),
        ("--set=leaderElection.leaseName=x", "'leaseName' not allowed", ""),
        ("--set=image.pullPolicy=Sometimes", "/image/pullPolicy", "must be one of"),
        ("--set=image.digest=latest", "/image/digest", "does not match pattern"),
        ("--set=watch.mode=everywhere", "/watch/mode", "must be one of"),
        ("--set=watch.mode=namespaced", "/watch/namespaces", "minItems"),
        ("--set=watch.namespaces={ml-team}", "/watch/namespaces", "maxItems"),
        ("--set=watch.namespaces={Bad_NS}", "/watch/namespaces/0", "does not match pattern"),
        ("--set=serviceMonitor.enabled=maybe", "/serviceMonitor/enabled", "must be one of"),
        ("--set=serviceMonitor.interval=30sec", "/serviceMonitor/interval", "pattern"),
        ("--set=operator.metricsPort=70000", "/operator/metricsPort", "maximum"),
        ("--set=resources.limits.memory=lots", "/resources/limits/memory", ""),
        ("--set=dashboards.enabled=yes please", "/dashboards/enabled", "want boolean"),
        ("--set=replicaCount=1", "'replicaCount' not allowed", ""),
        ("--set=image.tags=v1", "'tags' not allowed", ""),
    ],
)
def test_schema_rejects_wrong_values_naming_the_field(
    helm: Path, flag: str, field: str, why: str
) -> None:
    for cmd in (["template", "spotrun"], ["lint"]):
        result = run([str(helm), *cmd, str(CHART_DIR), flag])
        assert result.returncode != 0, f"helm {cmd[0]} accepted {flag}"
        message = result.stdout + result.stderr
        assert "values don't meet the specifications of the schema" in message, message
        assert field in message and why in message, message


def test_template_checks_reject_clashing_ports() -> None:
    result = helm_template("--set=operator.metricsPort=8080")
    assert result.returncode != 0
    assert "operator.metricsPort: must differ from operator.healthPort" in result.stderr


def test_security_contexts_are_values() -> None:
    # The defaults above are values: a platform's own uid or a Localhost seccomp profile.
    pod = one(
        render(
            "--set=podSecurityContext.runAsUser=1001",
            "--set=securityContext.runAsUser=1001",
            "--set=securityContext.seccompProfile.type=Localhost",
            "--set=securityContext.seccompProfile.localhostProfile=profiles/spotrun.json",
        ),
        "Deployment",
    )["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 1001
    assert pod["securityContext"]["fsGroup"] == 65532
    sc = pod["containers"][0]["securityContext"]
    assert sc["runAsUser"] == 1001 and sc["readOnlyRootFilesystem"] is True
    assert sc["seccompProfile"] == {
        "type": "Localhost",
        "localhostProfile": "profiles/spotrun.json",
    }
    for bad in ("podSecurityContext.runAsUser=-1", "securityContext.seccompProfile.type=Any"):
        result = helm_template(f"--set={bad}")
        assert result.returncode != 0, bad
        assert "values don't meet the specifications of the schema" in result.stderr, bad


# --------------------------------------------------------------------- values docs, NOTES
def test_every_value_has_a_comment_above_it() -> None:
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        if re.match(r"^\s*[\w.-]+:", line):
            above = lines[i - 1].strip() if i else ""
            if not above.startswith("#"):
                undocumented.append(f"values.yaml:{i + 1}: {line.strip()}")
    assert not undocumented, "keys without a comment right above:\n" + "\n".join(undocumented)


def test_schema_covers_every_default_value() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())

    def walk(node: dict[str, Any], value: dict[str, Any], path: str) -> None:
        props = node.get("properties", {})
        for key, sub in value.items():
            assert key in props, f"{path}{key} is not in values.schema.json"
            if isinstance(sub, dict) and props[key].get("properties"):
                walk(props[key], sub, f"{path}{key}.")

    walk(schema, values, "")


def test_notes_render(helm: Path, tmp_path: Path) -> None:
    # helm renders NOTES.txt only on install, which needs a cluster even with
    # --dry-run=client; render it through tpl in a scratch copy of the chart instead.
    chart = tmp_path / "spotrun"
    shutil.copytree(CHART_DIR, chart)
    (chart / "files" / "notes.txt").write_text((CHART_DIR / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: |-\n"
        '{{ tpl (.Files.Get "files/notes.txt") . | indent 4 }}\n'
    )
    for args, expected in [
        (ALL, ["Watching namespaces: ml-team, research", "ServiceMonitor (operator):   created",
               "Grafana dashboards:          created"]),
        ((), ["Watching: every namespace (clusterwide)", "PodMonitor (trainer rank 0): not created",
              '"auto" creates an object only when']),
    ]:  # fmt: skip
        result = run(
            [str(helm), "template", "spotrun", str(chart), "-n", "spotrun-system", *args,
             "--show-only=templates/zz-notes.yaml"]
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        notes = yaml.safe_load(result.stdout)["data"]["notes"]
        assert "kubectl -n spotrun-system rollout status deployment/spotrun" in notes
        assert "{{" not in notes
        for line in expected:
            assert line in notes, notes
