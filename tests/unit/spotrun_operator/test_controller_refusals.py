"""The training operator's FailedCreatePod events of a run's PyTorchJob: a watch the
apiserver filters (handlers.SERVER_FIELD_SELECTORS) fills ``Cache.refusals``, and observe
reads the refusal of the live job from there, with no request per look."""

from __future__ import annotations

from typing import Any

import kopf

from spotrun_operator import handlers
from spotrun_operator.facts.common import LABEL_RUN
from spotrun_operator.watching.cache import Cache, CachedReads

INVALID_POD = (
    'Error creating: Pod "llm-a1-master-0" is invalid: spec.containers[0].resources.requests: '
    'Invalid value: "2Gi": must be less than or equal to memory limit of 1Gi'
)
JOB = {
    "kind": "PyTorchJob",
    "metadata": {
        "name": "llm-a1",
        "uid": "job-1",
        "namespace": "ml",
        "resourceVersion": "5",
        "labels": {LABEL_RUN: "llm"},
    },
}


def event(
    name: str, message: str, uid: str = "job-1", kind: str = "PyTorchJob", at: str = "01"
) -> dict[str, Any]:
    return {
        "kind": "Event",
        "metadata": {"name": name, "namespace": "ml", "resourceVersion": "7"},
        "reason": "FailedCreatePod",
        "message": message,
        "lastTimestamp": f"2026-05-01T12:00:{at}Z",
        "involvedObject": {"kind": kind, "name": "llm-a1", "uid": uid, "namespace": "ml"},
    }


class NoApi:
    def missing(self, namespace: str, refs: Any) -> list[str]:
        raise AssertionError("no API read")


def test_the_newest_refusal_of_that_very_job_is_read_from_the_cache() -> None:
    cache = Cache()
    reads = CachedReads(cache, NoApi())
    assert reads.pod_refusal("ml", JOB) is None
    cache.refusals.put(event("e1", "Error creating: pods is forbidden: exceeded quota", at="01"))
    cache.refusals.put(event("e2", INVALID_POD, at="02"))
    # Another job of the same name (an earlier run's), and an event on something else.
    cache.refusals.put(event("e3", INVALID_POD.replace("2Gi", "9Gi"), uid="job-0", at="09"))
    cache.refusals.put(event("e4", INVALID_POD.replace("2Gi", "8Gi"), kind="Pod", at="09"))
    rejected = reads.pod_refusal("ml", JOB)
    assert rejected is not None and rejected.kind == "Pod" and "llm-a1" in rejected.name
    assert rejected.message.startswith('Pod "llm-a1-master-0" is invalid: spec.containers[0]')
    assert '"2Gi"' in rejected.message
    cache.refusals.delete(
        {**event("e2", ""), "metadata": {**event("e2", "")["metadata"], "resourceVersion": "8"}}
    )
    # Left: a quota refusal, which is transient (no verdict on the spec).
    assert reads.pod_refusal("ml", JOB) is None


def test_a_refusal_wakes_the_run_of_its_job() -> None:
    cache = Cache()
    assert cache.jobs_owning(event("e1", INVALID_POD)) == []
    cache.jobs.put(JOB)
    assert cache.jobs_owning(event("e1", INVALID_POD)) == [("ml", "llm")]
    assert cache.jobs_owning(event("e1", INVALID_POD, uid="job-0")) == []


def test_the_apiserver_sends_only_refusals_and_the_runs_pods_and_jobs() -> None:
    settings = kopf.OperatorSettings()
    handlers.configure(settings)
    assert settings.watching.field_selectors[("v1", "events")] == (
        "reason=FailedCreatePod,involvedObject.kind=PyTorchJob"
    )
    assert len(settings.watching.field_selectors) == 1
    assert settings.watching.label_selectors["pods"] == LABEL_RUN
    assert settings.watching.label_selectors[("kubeflow.org", "pytorchjobs")] == LABEL_RUN
    assert len(settings.watching.label_selectors) == 2
    assert settings.watching.chunk_size == handlers.LIST_CHUNK_SIZE
