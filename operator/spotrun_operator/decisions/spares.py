"""The run's warm spares (spec.capacity.warmSpares), decided at the end of every decision
(pure: actions and status only).

While the run is active (not finished, not suspended by spec.suspend or its budget) and
asks for spares, or its live attempt runs shrunk and may grow back (:mod:`grow_back`), the
Deployment ``<run>-spares`` is applied with that many replicas of the run's image;
otherwise it is deleted. Level-based: the desired Deployment is derived
again at each reconcile, and the I/O layer skips a body it applied for the run shortly
before. ``status.spares`` records what was last asked for (an event only when that
changes) and which spares hold a node (their cost, :mod:`money.spares`).
"""

from __future__ import annotations

from spotrun_api.enums import Phase
from spotrun_api.spares import SparesStatus
from spotrun_api.spec import TrainingRunSpec
from spotrun_operator.decisions.draft import Draft
from spotrun_operator.decisions.grow_back import missing_nodes
from spotrun_operator.facts.common import SPARE_PRIORITY_CLASS, is_capacity_request, spares_name
from spotrun_operator.model.plan import ApplySpares, DeleteSpares
from spotrun_operator.model.spares import build_spares_deployment
from spotrun_operator.money.spares import track


def wanted(spec: TrainingRunSpec | None, phase: Phase, growing: int = 0) -> int:
    """How many spares the run should have now (0: none, the Deployment goes): its warm
    spares, plus ``growing`` placeholders for the nodes a shrunk attempt lacks
    (:mod:`grow_back`)."""
    if spec is None or spec.suspend or phase.terminal or phase is Phase.SUSPENDED:
        return 0
    return spec.capacity.warm_spares + growing


def plan_spares(d: Draft, phase: Phase) -> None:
    """Apply or delete the spares' Deployment for ``phase`` (the phase just derived), and
    draft status.spares."""
    spec = d.spec
    old = d.status.spares or SparesStatus()
    capacity = spec.capacity.type.value if spec is not None else "spot"
    new = track(
        d.status.spares,
        d.obs.spare_pods,
        d.obs.deleted_spare_pods,
        d.obs.nodes,
        d.now,
        d.prices,
        capacity,
    )
    growing = missing_nodes(spec, d.history[-1] if d.history else None)
    want = wanted(spec, phase, growing)
    name = spares_name(d.obs.ref.name)
    if want and spec is not None:
        body = build_spares_deployment(
            d.obs.ref, spec, pull_images=d.cfg.pull_images, replicas=want
        )
        d.actions.append(ApplySpares(body))
        new = new.model_copy(update={"replicas": want, "image": spec.image})
        if (old.replicas, old.image) != (want, spec.image):
            why = f", {growing} of them for the nodes the shrunk attempt lacks" if growing else ""
            d.event(
                "Normal",
                "SparesUpdated",
                f"keeping {want} warm spare node(s){why} of {capacity} "
                f"{', '.join(spec.capacity.instance_types)} (Deployment {name}, "
                f"PriorityClass {SPARE_PRIORITY_CLASS}, image {spec.image})",
            )
    else:
        # Grow-back placeholders go by status.spares.replicas or their pods (an elastic run
        # that never shrank has neither: no DELETE for it).
        asked = spec is not None and spec.capacity.warm_spares > 0
        spares = [p for p in d.obs.spare_pods if not is_capacity_request(p)]
        if old.replicas or spares or asked:
            d.actions.append(DeleteSpares(name))
        new = new.model_copy(update={"replicas": None, "image": None})
        if old.replicas:
            why = (
                "spec.capacity.warmSpares is 0"
                if spec and spec.capacity.warm_spares == 0
                else (f"the run is {phase.value.lower()}")
            )
            d.event("Normal", "SparesRemoved", f"{why}: deleting the warm spares ({name})")
    d.status.spares = None if new == SparesStatus() else new
