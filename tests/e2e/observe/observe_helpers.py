"""Helpers of the install-and-observe tests: the real helm, ServiceAccount kubeconfigs, the
apiserver's audit log, RBAC grants, and the PromQL of the dashboards and alert rules."""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from chartkit import iter_panels, load_dashboards, substitute_variables
from kubernetes import client

from spotrun_dev import paths
from spotrun_dev.prometheus import Series

CHART = paths.REPO_ROOT / "charts" / "spotrun"
HELM = paths.BIN_DIR / "helm"
ALERTS_FILE = paths.REPO_ROOT / "alerts" / "spotrun.rules.yaml"

# (apiGroup, resource[/subresource], verb): the unit both RBAC rules and audit events share.
Grant = tuple[str, str, str]


# ----------------------------------------------------------------------------------- helm
@dataclass
class Helm:
    """The pinned helm binary against one kubeconfig; every call fails loudly."""

    kubeconfig: Path
    binary: Path = HELM

    def __call__(self, *args: str, timeout: float = 180) -> str:
        cmd = [str(self.binary), "--kubeconfig", str(self.kubeconfig), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
        return done.stdout

    def install(self, release: str, namespace: str, *sets: str) -> None:
        # --take-ownership: the TrainingRun CRD may already exist (kept by an earlier
        # release, or applied by other tests); a real first install never needs it.
        self("install", release, str(CHART), "-n", namespace, "--take-ownership", *sets)

    def status(self, release: str, namespace: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self("status", release, "-n", namespace, "-o", "json"))
        return out

    def manifest(self, release: str, namespace: str) -> list[dict[str, Any]]:
        text = self("get", "manifest", release, "-n", namespace)
        return [d for d in yaml.safe_load_all(text) if d]

    def uninstall(self, release: str, namespace: str) -> None:
        self("uninstall", release, "-n", namespace, "--wait", "--timeout", "120s")

    def releases(self, namespace: str) -> list[str]:
        out = json.loads(self("list", "-n", namespace, "-a", "-o", "json"))
        return [r["name"] for r in out]


# ------------------------------------------------------------------- ServiceAccount login
def service_account_kubeconfig(
    core: client.CoreV1Api, admin_kubeconfig: Path, namespace: str, sa: str, path: Path
) -> Path:
    """A kubeconfig that authenticates as ``system:serviceaccount:<namespace>:<sa>`` with a
    bound token (TokenRequest, what `kubectl create token` does): exactly the identity the
    chart's Deployment runs as, so the apiserver authorizes every call with the chart's RBAC."""
    req = core.create_namespaced_service_account_token(
        sa, namespace, {"spec": {"expirationSeconds": 7200}}
    )
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    ctx = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    cluster = next(c for c in admin["clusters"] if c["name"] == ctx["context"]["cluster"])
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": sa, "user": {"token": req.status.token}}],
        "contexts": [{"name": sa, "context": {"cluster": cluster["name"], "user": sa}}],
        "current-context": sa,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def service_account_user(namespace: str, sa: str) -> str:
    return f"system:serviceaccount:{namespace}:{sa}"


# ---------------------------------------------------------------------------- audit log
@dataclass
class AuditLog:
    """The apiserver's audit log (JSON lines), read from a byte offset on."""

    path: Path = paths.AUDIT_LOG

    def offset(self) -> int:
        assert self.path.exists(), f"no audit log at {self.path}: is the local cluster up?"
        return self.path.stat().st_size

    def events(self, since: int, username: str) -> list[dict[str, Any]]:
        """Events of ``username`` written after byte ``since``."""
        return [
            ev
            for ev in self.all_events(since)
            if (ev.get("user") or {}).get("username") == username
        ]

    def by_agent(self, since: int, prefix: str) -> list[dict[str, Any]]:
        """Completed requests after byte ``since`` whose user agent starts with ``prefix``
        (kopf's watches say ``kopf/``, the operator's own calls ``spotrun-operator/``)."""
        done = [ev for ev in self.all_events(since) if ev.get("stage") == "ResponseComplete"]
        return [ev for ev in done if str(ev.get("userAgent") or "").startswith(prefix)]

    def all_events(self, since: int) -> list[dict[str, Any]]:
        """Every event written after byte ``since``."""
        out = []
        with self.path.open("rb") as f:
            f.seek(since)
            for raw in f:
                try:
                    out.append(json.loads(raw))
                except ValueError:
                    continue  # a line still being written
        return out


@dataclass
class Usage:
    """What an identity did, according to the audit log."""

    used: dict[Grant, int] = field(default_factory=dict)  # grant → authorized requests
    forbidden: list[str] = field(default_factory=list)  # "verb uri": denied by RBAC (or 401)
    rejected: list[str] = field(default_factory=list)  # authorized, refused after (admission)
    non_resource: set[str] = field(default_factory=set)  # discovery and the like


def usage(events: Iterable[Mapping[str, Any]]) -> Usage:
    """Sort an identity's audit events. A grant is used when the authorizer allowed a
    request for it, whatever admission said next (a 403 "namespace is being terminated"
    is admission, and says nothing about RBAC)."""
    u = Usage()
    for ev in events:
        status = ev.get("responseStatus") or {}
        code = int(status.get("code") or 0)
        decision = (ev.get("annotations") or {}).get("authorization.k8s.io/decision")
        what = f"{ev.get('verb')} {ev.get('requestURI')}"
        if code == 401 or decision == "forbid":
            u.forbidden.append(f"{what} ({code}: {status.get('message')})")
            continue
        if code >= 400 and code not in (404, 409):
            u.rejected.append(f"{what} ({code} {status.get('reason')})")
        ref = ev.get("objectRef")
        if not ref:
            u.non_resource.add(str(ev.get("requestURI")).split("?")[0])
            continue
        resource = str(ref["resource"])
        if ref.get("subresource"):
            resource += f"/{ref['subresource']}"
        key = (str(ref.get("apiGroup") or ""), resource, str(ev["verb"]))
        u.used[key] = u.used.get(key, 0) + 1
    return u


def granted(docs: Iterable[Mapping[str, Any]]) -> set[Grant]:
    """Every (apiGroup, resource, verb) the ClusterRoles and Roles in ``docs`` grant."""
    out: set[Grant] = set()
    for doc in docs:
        if doc.get("kind") not in ("ClusterRole", "Role"):
            continue
        for rule in doc.get("rules") or []:
            assert "nonResourceURLs" not in rule, rule
            # Only the leader election Lease is granted by name (get, update).
            assert "resourceNames" not in rule or rule["resources"] == ["leases"], rule
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        assert "*" not in (group, resource, verb), rule
                        out.add((group, resource, verb))
    return out


def format_grants(grants: Iterable[Grant], counts: Mapping[Grant, int] | None = None) -> str:
    lines = []
    for group, resource, verb in sorted(grants):
        n = f"  x{counts[(group, resource, verb)]}" if counts else ""
        lines.append(f"  {group or 'core'} {resource} {verb}{n}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- PromQL
@dataclass(frozen=True)
class Query:
    source: str  # "spotrun-run.json" or "alerts"
    name: str  # panel title + refId, variable name, or alert name
    expr: str  # plain PromQL (Grafana variables substituted)

    @property
    def key(self) -> str:
        return f"{self.source}: {self.name}"


def dashboard_and_alert_queries(variables: Mapping[str, str]) -> list[Query]:
    """Every panel target and query variable of dashboards/*.json, and every alert
    expression of alerts/spotrun.rules.yaml, with Grafana's variables replaced."""
    out: list[Query] = []
    for name, dashboard in load_dashboards().items():
        for panel in iter_panels(dashboard["panels"]):
            for t in panel.get("targets", []):
                where = f"{panel['title']} [{t['refId']}]"
                out.append(Query(name, where, substitute_variables(t["expr"], variables)))
        for var in dashboard["templating"]["list"]:
            if var["type"] == "query":
                query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
                selector = query.strip().removeprefix("label_values(").rsplit(",", 1)[0]
                expr = substitute_variables(selector, variables)
                out.append(Query(name, f"variable {var['name']}", expr))
    for group in yaml.safe_load(ALERTS_FILE.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                out.append(Query("alerts", rule["alert"], str(rule["expr"]).strip()))
    return out


def has_data(series: Iterable[Series]) -> bool:
    """At least one finite value (histogram_quantile of empty buckets is NaN: no data)."""
    return any(math.isfinite(v) for s in series for _, v in s.values)


def finite_values(series: Iterable[Series]) -> Iterator[tuple[dict[str, str], float]]:
    for s in series:
        for _, v in s.values:
            if math.isfinite(v):
                yield s.labels, v
