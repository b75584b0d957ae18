"""Bad input is a verdict: a spec that cannot be parsed or built, or whose child the
apiserver rejects, ends the run Failed (InvalidSpec) with an event; decide never raises."""

from __future__ import annotations

from typing import Any

import pytest
from controller_fakes import CFG, gang, job, observed, spec

from spotrun_api.status import parse_status
from spotrun_operator.decisions.finish import status_patch
from spotrun_operator.decisions.reconcile import decide
from spotrun_operator.model.plan import CreateJob, Decision, DeleteJob, DeletePods, Rejected
from spotrun_operator.watching.observe import observe
from spotrun_operator.watching.refusals import pod_create_refusal

BAD_VALUES: list[Any] = ["x", 5, [1, "a"], {"a": 1}, True]
# Every passthrough place in spec.podTemplate a user can give the wrong shape.
POD_TEMPLATE_PATHS = [
    (),
    ("metadata",),
    ("metadata", "labels"),
    ("spec",),
    ("spec", "containers"),
    ("spec", "containers", 0),
    ("spec", "containers", 0, "env"),
    ("spec", "containers", 0, "volumeMounts"),
    ("spec", "containers", 0, "resources"),
    ("spec", "volumes"),
    ("spec", "volumes", 0),
    ("spec", "volumes", 0, "secret"),
    ("spec", "tolerations"),
    ("spec", "affinity"),
    ("spec", "affinity", "nodeAffinity"),
    ("spec", "initContainers"),
]


def _template(path: tuple[Any, ...], value: Any) -> Any:
    """A valid podTemplate with the node at ``path`` replaced by ``value``."""
    tpl: dict[str, Any] = {
        "metadata": {"labels": {"team": "ml"}},
        "spec": {
            "containers": [
                {
                    "name": "pytorch",
                    "env": [{"name": "A", "value": "1"}],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    "resources": {"limits": {"cpu": "4"}},
                }
            ],
            "volumes": [{"name": "data", "secret": {"secretName": "s"}}],
            "tolerations": [{"key": "k", "operator": "Exists"}],
            "affinity": {"nodeAffinity": {}},
            "initContainers": [{"name": "init", "image": "busybox"}],
        },
    }
    if not path:
        return value
    node: Any = tpl
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return tpl


def _invalid(d: Decision) -> dict[str, Any]:
    """The InvalidSpec verdict's condition, asserting the run failed with an event."""
    assert d.status is not None and d.status["phase"] == "Failed"
    failed = next(c for c in d.status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "InvalidSpec"
    assert any(e.type == "Warning" and e.reason == "InvalidSpec" for e in d.events)
    assert not any(isinstance(a, CreateJob) for a in d.actions)
    return dict(failed)


@pytest.mark.parametrize("path", POD_TEMPLATE_PATHS, ids=lambda p: ".".join(map(str, p)) or "-")
@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_a_pod_template_of_the_wrong_shape_is_a_verdict_never_an_exception(
    path: tuple[Any, ...], value: Any
) -> None:
    d = decide(observed(spec_over={"podTemplate": _template(path, value)}), CFG)
    assert d.status is not None
    if d.status["phase"] == "Failed":
        assert "spec.podTemplate" in _invalid(d)["message"]
    else:  # a shape the builders can still merge: the attempt is created as usual
        assert any(isinstance(a, CreateJob) for a in d.actions)


def test_a_pod_template_that_cannot_be_built_fails_at_once_naming_the_field() -> None:
    d = decide(observed(spec_over={"podTemplate": {"spec": {"containers": "pytorch"}}}), CFG)
    assert _invalid(d)["message"].startswith("invalid spec: spec.podTemplate: cannot build")


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"nodes": "two"}, "spec.nodes"),
        ({"nodes": 0}, "spec.nodes"),
        ({"gpusPerNode": 17}, "spec.gpusPerNode"),
        ({"command": "python train.py"}, "spec.command"),
        ({"args": [1, {"a": 2}]}, "spec.args.1"),
        ({"env": "A=1"}, "spec.env"),
        ({"env": [{"value": "1"}]}, "spec.env.0.name"),
        ({"resources": {"limits": {"cpu": "lots"}}}, "spec.resources.limits.cpu"),
        ({"resources": "big"}, "spec.resources"),
        ({"capacity": {"type": "gpu"}}, "spec.capacity.type"),
        ({"capacity": {"instanceTypes": []}}, "spec.capacity.instanceTypes"),
        ({"capacity": {"onDemandFallbackAfter": "soon"}}, "spec.capacity.onDemandFallbackAfter"),
        ({"checkpoint": {"volume": {"claimName": "c"}, "keep": 0}}, "spec.checkpoint.keep"),
        ({"budget": {"maxUSD": -5}}, "spec.budget.maxUSD"),
        ({"terminationGracePeriodSeconds": 0}, "spec.terminationGracePeriodSeconds"),
        ({"podTemplate": ["not", "an", "object"]}, "spec.podTemplate"),
        ({"image": ""}, "spec.image"),
    ],
)
def test_a_spec_the_model_rejects_fails_the_run_naming_the_field(
    over: dict[str, Any], field: str
) -> None:
    d = decide(observed(spec_over=over), CFG)
    assert f"{field}:" in _invalid(d)["message"]


def test_a_create_the_apiserver_rejected_fails_the_run_with_its_message() -> None:
    st: dict[str, Any] = {}
    d = decide(observed(), CFG)
    assert d.status is not None and any(isinstance(a, CreateJob) for a in d.actions)
    st.update(d.status)
    msg = 'PyTorchJob.kubeflow.org "llm-a1" is invalid: spec.containers[0].env[0].value: bad'
    rejected = Rejected(kind="PyTorchJob", name="llm-a1", message=msg)
    d = decide(observed(now=1, status=st, rejected=rejected), CFG)
    failed = _invalid(d)
    assert failed["message"] == f"invalid spec: the apiserver rejected PyTorchJob llm-a1: {msg}"


def test_an_invalid_spec_stops_a_running_gang_and_settles() -> None:
    """A spec edited into an unbuildable one while running: the run fails, the gang is
    stopped, and later reconciles change nothing (no crash loop, no repeated writes)."""
    bad = {"podTemplate": {"spec": {"volumes": 7}}}
    st = {"attempt": 1, "phase": "Running", "attempts": [{"attempt": 1, "startedAt": "x"}]}
    d = decide(observed(now=10, spec_over=bad, status=st, jobs={1: job(1)}, pods=gang(1)), CFG)
    _invalid(d)
    assert any(isinstance(a, DeleteJob) for a in d.actions)
    assert d.status is not None
    done = {**st, **d.status}
    again = decide(observed(now=20, spec_over=bad, status=done), CFG)
    assert again.status is None and not again.events


def test_a_spec_that_cannot_be_read_stops_the_running_gang() -> None:
    st = {"attempt": 1, "phase": "Running", "attempts": [{"attempt": 1, "startedAt": "x"}]}
    obs = observed(now=10, spec_over={"nodes": "two"}, status=st, jobs={1: job(1)}, pods=gang(1))
    d = decide(obs, CFG)
    assert "spec.nodes:" in _invalid(d)["message"]
    assert DeleteJob("llm-a1") in d.actions  # its pods go with it (garbage collector)
    assert not [a for a in d.actions if isinstance(a, DeletePods)]


def test_the_status_diff_writes_only_what_changed_and_nulls_what_was_unset() -> None:
    old = parse_status({"phase": "Running", "message": "m", "progress": {"step": 3}})
    assert status_patch(old, old.model_copy(deep=True)) is None
    new = old.model_copy(update={"message": None, "attempt": 2, "progress": None})
    assert status_patch(old, new) == {"message": None, "attempt": 2}  # progress: the trainer's


class _Reads:
    """The reads observe() makes, of a run with no children yet."""

    def list_jobs(self, namespace: str, run: str, owner_uid: str) -> dict[int, Any]:
        return {}

    def list_pods(self, namespace: str, run: str) -> list[dict[str, Any]]:
        return []

    def get_node(self, name: str) -> dict[str, Any] | None:
        return None

    def missing(self, namespace: str, refs: Any) -> list[str]:
        return [f"{kind} {name}" for kind, name in refs]

    def get_workload(self, namespace: str, job_uid: str) -> dict[str, Any] | None:
        return None

    def pod_refusal(self, namespace: str, job: Any) -> Any:
        return None


@pytest.mark.parametrize(
    ("spec_over", "error"),
    [
        ({"nodes": "two"}, "spec.nodes: Input should be a valid integer"),
        ({"podTemplate": {"spec": {"volumes": "data"}}}, ""),
    ],
)
def test_observe_turns_bad_input_into_data_for_decide(
    spec_over: dict[str, Any], error: str
) -> None:
    run = {"metadata": {"name": "llm", "namespace": "ml", "uid": "u"}, "spec": spec(**spec_over)}
    obs = observe(_Reads(), run, remembered_nodes={}, seen_pods=[], interrupted_nodes=[])
    assert error in obs.spec_error and (obs.spec is None) == bool(error)
    assert obs.missing_refs == []  # nothing checked for an unusable spec
    assert decide(obs, CFG).phase == "Failed"


def test_observe_checks_the_objects_a_usable_spec_references() -> None:
    run = {"metadata": {"name": "llm", "namespace": "ml", "uid": "u"}, "spec": spec()}
    obs = observe(_Reads(), run, remembered_nodes={}, seen_pods=[], interrupted_nodes=[])
    assert obs.spec is not None and obs.missing_refs == ["PersistentVolumeClaim ckpt"]


# The training operator's event when the apiserver refuses a pod it makes (kubeflow/
# training-operator pkg/controller.v1/control/pod_control.go: "Error creating: %v").
INVALID_POD = (
    'Error creating: Pod "llm-a1-master-0" is invalid: spec.containers[0].resources.requests: '
    'Invalid value: "2": must be less than or equal to cpu limit of 1'
)


def failed_create(message: str, stamp: str = "2026-05-01T12:00:01Z") -> dict[str, Any]:
    return {
        "reason": "FailedCreatePod",
        "type": "Warning",
        "message": message,
        "lastTimestamp": stamp,
        "involvedObject": {"kind": "PyTorchJob", "name": "llm-a1"},
    }


def test_a_pod_the_apiserver_refused_is_read_from_the_training_operators_event() -> None:
    quota = failed_create(
        'Error creating: pods "llm-a1-master-0" is forbidden: exceeded quota: gpu',
        "2026-05-01T12:00:09Z",
    )
    rejected = pod_create_refusal([quota, failed_create(INVALID_POD)])
    assert rejected is not None and rejected.kind == "Pod"
    assert rejected.message.startswith('Pod "llm-a1-master-0" is invalid: spec.containers[0]')
    assert "llm-a1" in rejected.name
    assert pod_create_refusal([quota]) is None  # a full quota is not a verdict on the spec
    assert (
        pod_create_refusal([{**failed_create(INVALID_POD), "reason": "SuccessfulCreatePod"}])
        is None
    )


class _ReadsWithRefusedPods(_Reads):
    """A run whose attempt 1 exists and whose pods the apiserver refuses."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def list_jobs(self, namespace: str, run: str, owner_uid: str) -> dict[int, Any]:
        return {1: {"metadata": {"name": "llm-a1", "uid": "job-1"}}}

    def missing(self, namespace: str, refs: Any) -> list[str]:
        return []

    def pod_refusal(self, namespace: str, job: Any) -> Rejected | None:
        self.asked.append(job["metadata"]["name"])
        return pod_create_refusal([failed_create(INVALID_POD)])


def test_a_refused_pod_fails_the_run_as_invalid_spec_naming_the_field() -> None:
    status: dict[str, Any] = {
        "attempt": 1,
        "attempts": [{"attempt": 1, "createdAt": "2026-05-01T12:00:00Z"}],
    }
    run = {
        "metadata": {"name": "llm", "namespace": "ml", "uid": "u"},
        "spec": spec(),
        "status": status,
    }
    reads = _ReadsWithRefusedPods()
    obs = observe(reads, run, remembered_nodes={}, seen_pods=[], interrupted_nodes=[])
    assert reads.asked == ["llm-a1"] and obs.rejected is not None
    d = decide(obs, CFG)
    assert d.phase == "Failed" and d.status is not None
    failed = next(c for c in d.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert "spec.containers[0].resources.requests" in failed["message"]
    # Once the gang ran, pods are never made again: no event is read.
    ran = {**status, "attempts": [{**status["attempts"][0], "startedAt": "2026-05-01T12:00:05Z"}]}
    reads = _ReadsWithRefusedPods()
    obs = observe(
        reads, {**run, "status": ran}, remembered_nodes={}, seen_pods=[], interrupted_nodes=[]
    )
    assert reads.asked == [] and obs.rejected is None
