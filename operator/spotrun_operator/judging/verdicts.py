"""Bad input as a verdict (pure): a spec the typed model rejects, a spec whose children
cannot be built, or a child the apiserver refused to create all end the run ``Failed``
with reason ``InvalidSpec``; none of them is an exception retried forever."""

from __future__ import annotations

from spotrun_api.spec import TrainingRunSpec
from spotrun_operator.model import builders
from spotrun_operator.model.plan import Observed, RunRef

# What building from a spec that passed the model may raise on passthrough fields of the
# wrong shape (spec.podTemplate is preserved as the user wrote it).
BUILD_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError)


def build_problem(ref: RunRef, spec: TrainingRunSpec) -> str | None:
    """Why the run's children cannot be built from ``spec``; None when they can."""
    try:
        builders.build_pytorchjob(
            ref, spec, attempt=1, capacity_type=spec.capacity.type.value, interval_seconds=1
        )
        builders.referenced_objects(spec, ref)
    except BUILD_ERRORS as exc:
        return f"spec.podTemplate: cannot build the pods from it: {type(exc).__name__}: {exc}"
    return None


def invalid_spec(obs: Observed) -> str | None:
    """The message of the InvalidSpec verdict on ``obs``; None when the spec is usable."""
    if obs.spec is None:
        return f"invalid spec: {obs.spec_error}"
    if obs.rejected is not None:
        r = obs.rejected
        return f"invalid spec: the apiserver rejected {r.kind} {r.name}: {r.message}"
    problem = build_problem(obs.ref, obs.spec)
    return f"invalid spec: {problem}" if problem else None
