"""node_ops: the API calls the injected components make, in their own way."""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from spotrun_dev import node_ops


class _Core:
    """Records Event creates; refuses them like an apiserver refuses a namespace being
    deleted (403) when ``refuse`` is set."""

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse
        self.created: list[tuple[str, Any]] = []

    def create_namespaced_event(self, namespace: str, body: Any) -> None:
        if self.refuse:
            raise ApiException(status=403, reason="Forbidden")
        self.created.append((namespace, body))


def _record(core: _Core) -> None:
    pod = client.V1ObjectReference(kind="Pod", name="p", namespace="gone")
    event = {"reason": "PodEviction", "message": "evicting", "type": "Normal"}
    node_ops.record_event(core, pod, event, "aws-node-termination-handler", "n1")


def test_an_event_is_posted_in_the_objects_namespace_with_a_recorder_name() -> None:
    core = _Core(refuse=False)
    _record(core)
    [(namespace, body)] = core.created
    assert namespace == "gone" and body.metadata.name.startswith("p.")
    assert (body.reason, body.count, body.source.component) == (
        "PodEviction",
        1,
        "aws-node-termination-handler",
    )


def test_a_refused_event_never_fails_the_component() -> None:
    # client-go's recorder drops an event the apiserver refuses; the drain goes on.
    core = _Core(refuse=True)
    _record(core)
    assert core.created == []
