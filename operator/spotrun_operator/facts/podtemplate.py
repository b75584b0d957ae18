"""Merging the user's partial ``spec.podTemplate`` with what spotrun requires (pure).

Rules: spotrun's must-haves win (labels, contract env, the checkpoint mount, GPU limits,
restartPolicy, grace period, service account); user additions are kept (extra
containers, volumes, tolerations, nodeSelector keys); required node-affinity terms are
ANDed (every user term combined with every spotrun term, since terms are ORed). The
security contexts are defaults instead: each field the user sets in the pod's or the
trainer container's ``securityContext`` replaces spotrun's field of that name.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

Obj = dict[str, Any]


def merge_named(base: Sequence[Mapping[str, Any]], ours: Sequence[Mapping[str, Any]]) -> list[Obj]:
    """Lists of ``name``-keyed objects (env, volumes, mounts): ours replace same names."""
    names = {o["name"] for o in ours}
    return [dict(b) for b in base if b.get("name") not in names] + [dict(o) for o in ours]


def merge_mounts(base: Sequence[Mapping[str, Any]], ours: Sequence[Mapping[str, Any]]) -> list[Obj]:
    """volumeMounts: ours replace mounts of the same volume name or the same path."""
    names = {o["name"] for o in ours}
    paths = {o["mountPath"] for o in ours}
    kept = [dict(b) for b in base if b.get("name") not in names and b.get("mountPath") not in paths]
    return kept + [dict(o) for o in ours]


def merge_tolerations(
    base: Sequence[Mapping[str, Any]], ours: Sequence[Mapping[str, Any]]
) -> list[Obj]:
    out = [dict(t) for t in base]
    for t in ours:
        if dict(t) not in out:
            out.append(dict(t))
    return out


def and_node_terms(
    user: Sequence[Mapping[str, Any]], ours: Sequence[Mapping[str, Any]]
) -> list[Obj]:
    """nodeSelectorTerms meaning "(any user term) AND (any of our terms)"."""
    if not user:
        return [copy.deepcopy(dict(t)) for t in ours]
    out: list[Obj] = []
    for u in user:
        for o in ours:
            term: Obj = {}
            for key in ("matchExpressions", "matchFields"):
                merged = list(u.get(key) or []) + list(o.get(key) or [])
                if merged:
                    term[key] = copy.deepcopy(merged)
            out.append(term)
    return out


def merge_affinity(
    user: Mapping[str, Any] | None,
    node_terms: Sequence[Mapping[str, Any]],
    preferred: Sequence[Mapping[str, Any]] = (),
) -> Obj:
    """The user's affinity with our required node terms ANDed in and our preferred
    scheduling terms added to the user's."""
    aff: Obj = copy.deepcopy(dict(user or {}))
    node_aff = aff.setdefault("nodeAffinity", {})
    req = node_aff.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = and_node_terms(req.get("nodeSelectorTerms") or [], node_terms)
    node_aff["requiredDuringSchedulingIgnoredDuringExecution"] = {"nodeSelectorTerms": terms}
    if preferred:
        key = "preferredDuringSchedulingIgnoredDuringExecution"
        node_aff[key] = [*(node_aff.get(key) or []), *copy.deepcopy(list(preferred))]
    return aff


def merge_defaults(defaults: Mapping[str, Any], user: Mapping[str, Any] | None) -> Obj:
    """``defaults`` with each top-level field the user set replaced by the user's."""
    return {**copy.deepcopy(dict(defaults)), **copy.deepcopy(dict(user or {}))}


def merge_resources(user: Mapping[str, Any] | None, ours: Mapping[str, Any]) -> Obj:
    """Container resources: ours (spec.resources + GPUs) override per resource name."""
    out: Obj = {}
    for key in ("requests", "limits", "claims"):
        merged = {**dict((user or {}).get(key) or {}), **dict(ours.get(key) or {})}
        if merged:
            out[key] = merged
    return out


def merge_container(user: Mapping[str, Any] | None, ours: Mapping[str, Any]) -> Obj:
    """The trainer container: the user's podTemplate entry refined by ours."""
    out: Obj = copy.deepcopy(dict(user or {}))
    for key, value in ours.items():
        if key == "env":
            out["env"] = merge_named(out.get("env") or [], value)
        elif key == "volumeMounts":
            out["volumeMounts"] = merge_mounts(out.get("volumeMounts") or [], value)
        elif key == "ports":
            port_names = {p.get("name") for p in value}
            kept = [p for p in out.get("ports") or [] if p.get("name") not in port_names]
            out["ports"] = kept + list(value)
        elif key == "resources":
            out["resources"] = merge_resources(out.get("resources"), value)
        elif value not in (None, [], ""):
            out[key] = copy.deepcopy(value)
    return out


def merge_pod_template(
    user: Mapping[str, Any],
    *,
    labels: Mapping[str, str],
    container: Mapping[str, Any],
    volumes: Sequence[Mapping[str, Any]],
    tolerations: Sequence[Mapping[str, Any]],
    node_terms: Sequence[Mapping[str, Any]],
    pod_fields: Mapping[str, Any],
    annotations: Mapping[str, str] | None = None,
    preferred: Sequence[Mapping[str, Any]] = (),
    pod_security: Mapping[str, Any] | None = None,
    container_security: Mapping[str, Any] | None = None,
) -> Obj:
    """A full PodTemplateSpec: ``user`` (spec.podTemplate) with spotrun's parts merged in
    (``annotations``, ``pod_security`` and ``container_security`` are defaults: the
    user's own values win, field by field)."""
    tpl: Obj = copy.deepcopy(dict(user or {}))
    meta = tpl.setdefault("metadata", {})
    meta["labels"] = {**dict(meta.get("labels") or {}), **labels}
    if annotations:
        meta["annotations"] = {**dict(annotations), **dict(meta.get("annotations") or {})}
    spec = tpl.setdefault("spec", {})
    name = container["name"]
    containers = list(spec.get("containers") or [])
    mine = next((c for c in containers if c.get("name") == name), None)
    others = [c for c in containers if c.get("name") != name]
    # The trainer goes first: tools that read "the" container (kubectl logs) pick it.
    trainer = merge_container(mine, container)
    if container_security:
        trainer["securityContext"] = merge_defaults(
            container_security, trainer.get("securityContext")
        )
    spec["containers"] = [trainer, *others]
    if pod_security:
        spec["securityContext"] = merge_defaults(pod_security, spec.get("securityContext"))
    spec["volumes"] = merge_named(spec.get("volumes") or [], volumes)
    spec["tolerations"] = merge_tolerations(spec.get("tolerations") or [], tolerations)
    spec["affinity"] = merge_affinity(spec.get("affinity"), node_terms, preferred)
    spec.update(copy.deepcopy(dict(pod_fields)))
    return tpl
