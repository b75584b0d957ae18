"""The operator's verbs on the Kubernetes API (synchronous; called from threads): the run's
status as a compare-and-swap, its jobs, pods, spares and events, and the actions a
reconcile decided, carried out in order. The calls themselves (one client, the official
``kubernetes`` package's dynamic client) are :class:`spotrun_operator.kubeio.calls.ApiCalls`;
nothing else of the operator but the Lease calls talks to the API.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from spotrun_operator.facts.common import (
    KIND,
    PYTORCHJOB_KIND,
    fmt_time,
    utcnow,
)
from spotrun_operator.kubeio.apiserver import (
    Refused,
    event_body,
    rbac_denied,
    replica_pods,
)
from spotrun_operator.kubeio.calls import ApiCalls, Obj
from spotrun_operator.kubeio.recorder import EventCorrelator, Send
from spotrun_operator.model.plan import (
    Action,
    ApplySpares,
    CreateJob,
    DeleteJob,
    DeletePods,
    DeleteSpares,
    EnsureObjects,
    Event,
    Rejected,
    RunRef,
    ValidateJob,
)

log = logging.getLogger(__name__)

# A run's spares Deployment is applied again (the same body) after this long: one write per
# run in this while puts back a Deployment changed or deleted behind the operator's back.
SPARES_REAPPLY_SECONDS = 600.0
FIELD_MANAGER = "spotrun-operator"


class Kube(ApiCalls):
    def __init__(
        self, api: client.ApiClient, timeout: float = 30.0, dry_run_pods: bool = False
    ) -> None:
        super().__init__(api, timeout)
        self.instance = os.environ.get("POD_NAME") or socket.gethostname()
        # --pod-dry-run (needs create on pods, which the chart grants only with
        # rbac.podDryRun); False again once the apiserver said 403 (no grant).
        self._dry_run_pods = dry_run_pods
        # Writes whose result is known (bounded): (namespace, kind, name, owner uid) of the
        # objects ensured for a run, and the spec versions whose job passed a dry run.
        self._ensured: dict[tuple[str, ...], None] = {}
        self._dry_run_passed: dict[str, None] = {}
        self.events = EventCorrelator(time.monotonic)
        # The last write of each run's spares Deployment: (body digest or "deleted", when).
        self._spares: dict[tuple[str, str], tuple[str, float]] = {}

    # --- writes ---------------------------------------------------------------------
    def patch_run_status(
        self, namespace: str, name: str, resource_version: str, status: Obj
    ) -> bool:
        """Merge-patch the run's status if nobody wrote the run since we read it.

        The resourceVersion precondition turns the write into a compare-and-swap: this is
        what makes recording an outcome (and bumping its counter) exactly-once. False on
        409 Conflict: re-observe and decide again."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        try:
            resp = self._merge_patch(self._res(KIND).status, name, namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        self._wrote(self._json(resp))
        return True

    def check_pods(self, job: Mapping[str, Any]) -> None:
        """Server-side dry run of the pods the training operator will make from ``job``:
        an invalid pod (a negative quantity, an unknown toleration operator, a volume
        without a source) raises :class:`Refused` now, instead of leaving the training
        operator failing to create it and the run Pending."""
        if not self._dry_run_pods:
            return
        for pod in replica_pods(job):
            try:
                self.create(pod, dry_run=True)
            except ApiException as exc:
                if exc.status != 403:
                    raise
                if rbac_denied(exc):
                    self._dry_run_pods = False
                    log.warning("no grant to dry-run pods (create pods): pod specs go unchecked")
                return  # a full quota: the real pods will wait for room, as without the check

    def refusal(self, job: Mapping[str, Any]) -> Rejected | None:
        """The apiserver's objection to ``job`` (a dry run), None when it has none."""
        try:
            self.create(job, dry_run=True)
        except Refused as exc:
            return exc.rejected
        return None

    def delete_job(self, namespace: str, name: str) -> None:
        # Background: the job is gone at once (so the training operator cannot recreate a
        # pod), its pods follow through the garbage collector with their grace period.
        self._delete(PYTORCHJOB_KIND, namespace, name, propagation_policy="Background")

    def delete_pod(self, namespace: str, name: str, grace_seconds: int) -> None:
        self._delete("Pod", namespace, name, grace_period_seconds=grace_seconds)

    def _spares_done(self, key: tuple[str, str], digest: str) -> bool:
        """The same spares write was made within SPARES_REAPPLY_SECONDS (and is not due
        again); records ``digest`` as made now otherwise."""
        now = time.monotonic()
        with self._lock:
            last = self._spares.get(key)
            if last is not None and last[0] == digest and now - last[1] < SPARES_REAPPLY_SECONDS:
                return True
            self._spares.pop(key, None)  # re-inserted last: the oldest goes first
            _remember(self._spares, key, (digest, now))
        return False

    def apply_spares(self, body: Mapping[str, Any]) -> None:
        """Server-side apply of a run's spares Deployment (field manager spotrun-operator,
        forcing its own fields back): creates, scales and updates it in one idempotent
        write, skipped while the same body was applied a short while ago."""
        meta = body["metadata"]
        key = (str(meta["namespace"]), str(meta["name"]))
        digest = json.dumps(body, sort_keys=True)
        if self._spares_done(key, digest):
            return
        try:
            self.dyn.server_side_apply(
                self._res("Deployment"),
                body=dict(body),
                namespace=key[0],
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
                _request_timeout=self.timeout,
                serialize=False,
            )
        except Exception:
            with self._lock:
                self._spares.pop(key, None)  # try again at the next reconcile
            raise

    def delete_spares(self, namespace: str, name: str) -> None:
        """Delete a run's spares Deployment (404 is success), once a while per process."""
        if self._spares_done((namespace, name), "deleted"):
            return
        try:
            self._delete("Deployment", namespace, name, propagation_policy="Background")
        except Exception:
            with self._lock:
                self._spares.pop((namespace, name), None)
            raise

    def correlate_event(self, ref: RunRef, ev: Event) -> Send | None:
        """What to write for ``ev`` (:mod:`recorder`); None: the spam filter dropped it."""
        return self.events.correlate(ref, ev)

    def write_event(self, ref: RunRef, ev: Event, send: Send) -> bool:
        """Write ``ev`` as ``send`` says (a repeat patches the existing Event's count), from
        the event sink's thread (:mod:`event_sink`). True when done: written, or refused by
        the apiserver (never tried again, as client-go's ``recordEvent``); False when the
        apiserver could not be reached (try again)."""
        now = fmt_time(utcnow())
        try:
            if send.name is not None and self._bump_event(ref.namespace, send, now):
                return True
            # Names grow with time, so events of the same second still list in order.
            name = f"{ref.name}.{time.time_ns():x}"
            body = event_body(ref, replace(ev, message=send.message), name, now, self.instance)
            self.create(body)
            self.events.posted(send.key, name)
        except (ApiException, Refused) as exc:
            log.warning("event %s for %s/%s refused: %s", ev.reason, ref.namespace, ref.name, exc)
        except HTTPError as exc:
            log.warning("event %s for %s/%s not sent: %s", ev.reason, ref.namespace, ref.name, exc)
            return False
        return True

    def _bump_event(self, namespace: str, send: Send, now: str) -> bool:
        """Patch the count of an Event posted before; False when it is gone (404)."""
        body = {"count": send.count, "lastTimestamp": now, "message": send.message[:1024]}
        try:
            self._merge_patch(self._res("Event"), str(send.name), namespace, body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.events.forget(send.key)
            return False
        return True

    def _ensure(self, objects: Sequence[Mapping[str, Any]]) -> None:
        """Create what a run needs once per operator process: a 409 (made by an earlier
        attempt or process) is success, and later attempts skip the write."""
        for obj in objects:
            meta = obj["metadata"]
            owners = ",".join(str(o.get("uid")) for o in meta.get("ownerReferences") or [])
            key = (str(meta["namespace"]), str(obj["kind"]), str(meta["name"]), owners)
            if key not in self._ensured:
                self.create(obj)
                _remember(self._ensured, key)

    def _validate(self, body: Mapping[str, Any], source: str) -> None:
        """The apiserver's dry run of a job and its pods, once per spec it is built from:
        types first (the PyTorchJob CRD's schema names the field), then values."""
        if source not in self._dry_run_passed:
            self.create(body, dry_run=True)
            self.check_pods(body)
            _remember(self._dry_run_passed, source)

    def execute(self, namespace: str, actions: Sequence[Action]) -> None:
        """Carry ``actions`` out in order; :class:`Refused` when the apiserver refuses an
        object built from the spec (the objects before it stay: the run owns them)."""
        for action in actions:
            if isinstance(action, EnsureObjects):
                self._ensure(action.objects)
            elif isinstance(action, ValidateJob):
                self._validate(action.body, action.source)
            elif isinstance(action, CreateJob):
                self._validate(action.body, action.source)
                if self.create(action.body):
                    log.info("created PyTorchJob %s/%s", namespace, action.body["metadata"]["name"])
            elif isinstance(action, DeleteJob):
                self.delete_job(namespace, action.name)
            elif isinstance(action, DeletePods):
                for name in action.names:
                    self.delete_pod(namespace, name, action.grace_seconds)
            elif isinstance(action, ApplySpares):
                self.apply_spares(action.body)
            elif isinstance(action, DeleteSpares):
                self.delete_spares(namespace, action.name)


def _remember(seen: dict[Any, Any], key: Any, value: Any = None, limit: int = 20000) -> None:
    """Add ``key`` to an insertion-ordered map, dropping the oldest beyond ``limit``."""
    seen[key] = value
    while len(seen) > limit:
        del seen[next(iter(seen))]
