"""kube.Kube.pod_refusal: the training operator's FailedCreatePod events of one PyTorchJob,
read by a field selector on that very job; an RBAC without list on events is warned about
once and never stops a reconcile."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from spotrun_operator.kube import Kube

JOB = {"metadata": {"name": "llm-a1", "uid": "job-1", "namespace": "ml"}}
INVALID_POD = (
    'Error creating: Pod "llm-a1-master-0" is invalid: spec.containers[0].resources.requests: '
    'Invalid value: "2Gi": must be less than or equal to memory limit of 1Gi'
)


class _Dyn:
    """The dynamic client's two calls pod_refusal makes: a resource lookup and a list."""

    def __init__(self, items: list[dict[str, Any]], error: ApiException | None = None) -> None:
        self.items, self.error = items, error
        self.calls: list[dict[str, Any]] = []
        self.resources = SimpleNamespace(get=lambda api_version, kind: f"{api_version}/{kind}")

    def get(self, resource: str, **params: Any) -> SimpleNamespace:
        self.calls.append({"resource": resource, **params})
        if self.error is not None:
            raise self.error
        return SimpleNamespace(data=json.dumps({"items": self.items}).encode())


class _Kube(Kube):
    def __init__(self, dyn: _Dyn) -> None:
        super().__init__(client.ApiClient())
        self.fake = dyn

    @property
    def dyn(self) -> Any:
        return self.fake


def _denied(status: int, message: str) -> ApiException:
    exc = ApiException(status=status, reason="Forbidden")
    exc.body = json.dumps({"kind": "Status", "message": message})
    return exc


def test_reads_the_failed_create_pod_events_of_that_job_only() -> None:
    event = {
        "reason": "FailedCreatePod",
        "message": INVALID_POD,
        "lastTimestamp": "2026-05-01T12:00:01Z",
        "involvedObject": {"kind": "PyTorchJob", "name": "llm-a1", "uid": "job-1"},
    }
    dyn = _Dyn([event])
    rejected = _Kube(dyn).pod_refusal("ml", JOB)
    assert rejected is not None and rejected.kind == "Pod" and "llm-a1" in rejected.name
    assert rejected.message.startswith('Pod "llm-a1-master-0" is invalid: spec.containers[0]')
    [call] = dyn.calls
    assert call["resource"] == "v1/Event" and call["namespace"] == "ml"
    # From the apiserver's watch cache: no wait for it to catch up with etcd.
    assert call["resource_version"] == "0"
    assert set(call["field_selector"].split(",")) == {
        "involvedObject.kind=PyTorchJob",
        "involvedObject.name=llm-a1",
        "involvedObject.uid=job-1",
        "reason=FailedCreatePod",
    }
    assert _Kube(_Dyn([])).pod_refusal("ml", JOB) is None


def test_no_grant_to_list_events_is_warned_once_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dyn = _Dyn(
        [],
        _denied(
            403,
            'events is forbidden: User "system:serviceaccount:spotrun:spotrun" cannot list '
            'resource "events" in API group "" in the namespace "ml"',
        ),
    )
    kube = _Kube(dyn)
    assert kube.pod_refusal("ml", JOB) is None
    assert kube.pod_refusal("ml", JOB) is None
    assert len(dyn.calls) == 1  # not asked again
    assert [r.message for r in caplog.records if "list events" in r.message] == [
        "no grant to list events: pods the apiserver refuses go unreported"
    ]


@pytest.mark.parametrize("status", [403, 500])
def test_other_errors_are_raised(status: int) -> None:
    kube = _Kube(_Dyn([], _denied(status, "the server is busy")))
    with pytest.raises(ApiException):
        kube.pod_refusal("ml", JOB)
