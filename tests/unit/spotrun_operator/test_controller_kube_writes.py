"""kube.Kube's writes: no write whose result is already known (objects ensured for a run,
a dry run already passed for the same spec), and every write's answer lands in the
watch caches before the watch brings it back."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import NewConnectionError

from spotrun_operator.kubeio import calls
from spotrun_operator.kubeio.kube import Kube
from spotrun_operator.model.plan import (
    CreateJob,
    DeleteJob,
    DeletePods,
    EnsureObjects,
    Event,
    RunRef,
)
from spotrun_operator.watching.cache import Cache

OWNER = [{"uid": "run-1"}]


def obj(kind: str, name: str, rv: str = "5", **meta: Any) -> dict[str, Any]:
    body = {"name": name, "namespace": "ml", "ownerReferences": OWNER, **meta}
    return {"kind": kind, "metadata": {**body, "resourceVersion": rv}}


class _Dyn:
    """The dynamic client's writes, answered like the apiserver: a create answers the
    object (409 when it exists); a delete answers a pod's last state, and for a custom
    resource gone for good a Status naming it (the generic registry's finalizeDelete: only
    stores with ReturnDeletedObject, not the CRD store, answer with the object)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.existing: set[tuple[str, str]] = set()
        self.resources = SimpleNamespace(get=lambda api_version, kind: kind)
        self.failing: Exception | None = None  # raised by the next create

    def patch(self, resource: str, name: str, **params: Any) -> SimpleNamespace:
        self.calls.append(("patch", resource, name))
        if (resource, name) not in self.existing:
            raise ApiException(status=404, reason="NotFound")
        return SimpleNamespace(data=json.dumps(obj(resource, name, "8")).encode())

    def create(self, resource: str, body: dict[str, Any], **params: Any) -> SimpleNamespace:
        name = body["metadata"]["name"]
        if self.failing is not None:
            failing, self.failing = self.failing, None
            raise failing
        dry = "dry-run" if params.get("dry_run") else "create"
        self.calls.append((dry, resource, name))
        if not params.get("dry_run"):
            if (resource, name) in self.existing:
                raise ApiException(status=409, reason="AlreadyExists")
            self.existing.add((resource, name))
        meta = {**body["metadata"], "resourceVersion": "7", "uid": f"uid-{name}"}
        answer = {**body, "metadata": meta}
        return SimpleNamespace(data=json.dumps(answer).encode())

    def delete(self, resource: str, name: str, **params: Any) -> SimpleNamespace:
        self.calls.append(("delete", resource, name))
        if resource == "PyTorchJob":
            details = {"name": name, "kind": "pytorchjobs", "uid": f"uid-{name}"}
            status = {"kind": "Status", "status": "Success", "details": details}
            return SimpleNamespace(data=json.dumps(status).encode())
        meta: dict[str, Any] = {"deletionTimestamp": "2026-01-01T00:00:00Z"}
        if resource == "Pod":
            meta["deletionGracePeriodSeconds"] = params.get("grace_period_seconds")
        return SimpleNamespace(data=json.dumps(obj(resource, name, "9", **meta)).encode())


class _Kube(Kube):
    def __init__(self, dyn: _Dyn) -> None:
        super().__init__(client.ApiClient())
        self.fake = dyn
        self.cache = Cache()

    @property
    def dyn(self) -> Any:
        return self.fake


def attempt(n: int, generation: int = 1) -> list[Any]:
    objects = (obj("ServiceAccount", "r"), obj("Role", "r"), obj("RoleBinding", "r"))
    job = obj("PyTorchJob", f"r-a{n}")
    return [EnsureObjects(objects), CreateJob(job, source=f"run-1/{generation}")]


def test_later_attempts_write_only_their_job() -> None:
    dyn = _Dyn()
    kube = _Kube(dyn)
    kube.execute("ml", attempt(1))
    assert [c[0] for c in dyn.calls] == ["create", "create", "create", "dry-run", "create"]
    dyn.calls.clear()
    kube.execute("ml", attempt(2))
    assert dyn.calls == [("create", "PyTorchJob", "r-a2")]
    # A new generation of the spec is checked again; the run's objects are not.
    dyn.calls.clear()
    kube.execute("ml", attempt(3, generation=2))
    assert dyn.calls == [("dry-run", "PyTorchJob", "r-a3"), ("create", "PyTorchJob", "r-a3")]


def test_a_restarted_operator_ensures_once_and_takes_409_as_made() -> None:
    dyn = _Dyn()
    _Kube(dyn).execute("ml", attempt(1))
    dyn.calls.clear()
    again = _Kube(dyn)  # a new process: nothing remembered
    again.execute("ml", attempt(2))
    assert [c[0] for c in dyn.calls] == ["create", "create", "create", "dry-run", "create"]
    dyn.calls.clear()
    again.execute("ml", attempt(3))
    assert dyn.calls == [("create", "PyTorchJob", "r-a3")]


def test_write_answers_land_in_the_cache() -> None:
    kube = _Kube(_Dyn())
    assert kube.cache is not None
    kube.execute("ml", attempt(1))
    job = kube.cache.jobs.get("ml", "r-a1")
    assert job is not None and job["metadata"]["resourceVersion"] == "7"
    kube.cache.pods.put(obj("Pod", "p", "3"))
    kube.cache.pods.put(obj("Pod", "q", "3"))
    kube.execute("ml", [DeleteJob("r-a1"), DeletePods(("p",), 110), DeletePods(("q",), 0)])
    assert kube.cache.jobs.get("ml", "r-a1") is None
    stopping = kube.cache.pods.get("ml", "p")
    assert stopping is not None and stopping["metadata"]["deletionTimestamp"]
    assert kube.cache.pods.get("ml", "q") is None  # force-deleted: gone


def test_a_job_deleted_for_good_stays_gone_until_another_object_takes_its_name() -> None:
    # The job's DELETE answers a Status, not the job: without it the cache kept the job
    # until the watch's DELETED event, and a reconcile before that deleted it again (404).
    kube = _Kube(_Dyn())
    assert kube.cache is not None
    kube.execute("ml", attempt(1))
    kube.execute("ml", [DeleteJob("r-a1")])
    assert kube.cache.jobs.get("ml", "r-a1") is None
    # Events of the deleted job still on their way, even with a newer resourceVersion (a
    # status update the watch had not delivered yet), do not bring it back.
    late = obj("PyTorchJob", "r-a1", "8", uid="uid-r-a1")
    assert not kube.cache.jobs.put(late)
    assert kube.cache.jobs.get("ml", "r-a1") is None
    again = obj("PyTorchJob", "r-a1", "20", uid="uid-other")
    assert kube.cache.jobs.put(again)  # a new job of the same name is news


def test_an_event_is_created_once_then_its_count_patched() -> None:
    dyn = _Dyn()
    kube = _Kube(dyn)
    ref, ev = RunRef("r", "ml", "run-1"), Event("Warning", "Preempted", "node n1 reclaimed")
    send = kube.correlate_event(ref, ev)
    assert send is not None and kube.write_event(ref, ev, send)
    assert [c[:2] for c in dyn.calls] == [("create", "Event")]
    again = kube.correlate_event(ref, ev)
    assert again is not None and again.count == 2
    assert kube.write_event(ref, ev, again)
    assert dyn.calls[-1] == ("patch", "Event", dyn.calls[0][2])
    # The Event was deleted (its TTL): the patch answers 404 and a new one is created.
    dyn.existing.clear()
    third = kube.correlate_event(ref, ev)
    assert third is not None and kube.write_event(ref, ev, third)
    assert [c[0] for c in dyn.calls[-2:]] == ["patch", "create"]


def test_an_event_write_is_retried_only_when_the_apiserver_was_not_reached() -> None:
    dyn = _Dyn()
    kube = _Kube(dyn)
    ref, ev = RunRef("r", "ml", "run-1"), Event("Normal", "AttemptCreated", "attempt 2")
    send = kube.correlate_event(ref, ev)
    assert send is not None
    dyn.failing = NewConnectionError(None, "connection refused")  # type: ignore[arg-type]
    assert not kube.write_event(ref, ev, send)  # try again
    dyn.failing = ApiException(status=500, reason="InternalError")
    assert kube.write_event(ref, ev, send)  # answered: abandoned, as client-go does
    assert kube.write_event(ref, ev, send)
    assert [c[:2] for c in dyn.calls] == [("create", "Event")]


def test_the_dynamic_client_is_made_once_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Any] = []

    class _Made:
        def __init__(self, api: Any) -> None:
            made.append(api)

    monkeypatch.setattr(calls, "DynamicClient", _Made)
    api = client.ApiClient()
    kube = Kube(api)
    assert made == []  # nothing at construction: discovery waits for the first call
    first = kube.dyn
    assert isinstance(first, _Made) and kube.dyn is first and made == [api]
