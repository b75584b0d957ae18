"""The only module that talks to the Kubernetes API (synchronous; called from threads).

One client: the official ``kubernetes`` package, through its public dynamic client
(``kubernetes.dynamic.DynamicClient``). Objects travel as plain JSON dicts both ways (the
pure modules never see client models), and the dynamic client sends them as they are,
with the content type (merge patch) or ``Accept`` (metadata only) each call needs. The
typed ``CoreV1Api`` would validate bodies against its own models first: a pod template
the user passed through would then fail in the client with the client's words instead
of the apiserver's message naming the field, which is what ``InvalidSpec`` reports.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError
from urllib3.exceptions import HTTPError

from spotrun_operator.facts.common import (
    KIND,
    PYTORCHJOB_KIND,
    fmt_time,
    utcnow,
)
from spotrun_operator.kubeio.apiserver import (
    API_VERSIONS,
    MERGE_PATCH,
    METADATA_LIST,
    METADATA_ONLY,
    Refused,
    event_body,
    message_of,
    rbac_denied,
    refused,
    replica_pods,
)
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
from spotrun_operator.watching.cache import Cache

log = logging.getLogger(__name__)
Obj = dict[str, Any]

# Objects per page of a listing (client-go's reflector asks for 500).
LIST_PAGE = 500
# A run's spares Deployment is applied again (the same body) after this long: one write per
# run in this while puts back a Deployment changed or deleted behind the operator's back.
SPARES_REAPPLY_SECONDS = 600.0
FIELD_MANAGER = "spotrun-operator"


class Kube:
    def __init__(
        self, api: client.ApiClient, timeout: float = 30.0, dry_run_pods: bool = False
    ) -> None:
        self.api = api
        self.timeout = timeout
        self.instance = os.environ.get("POD_NAME") or socket.gethostname()
        self._dyn: DynamicClient | None = None
        self._lock = threading.Lock()
        self._resources: dict[str, Any] = {}
        # --pod-dry-run (needs create on pods, which the chart grants only with
        # rbac.podDryRun); False again once the apiserver said 403 (no grant).
        self._dry_run_pods = dry_run_pods
        # Watch-fed caches that the answers to the operator's own writes go into (set by
        # the runner): the next reconcile sees them before the watch event comes back.
        self.cache: Cache | None = None
        # Writes whose result is known (bounded): (namespace, kind, name, owner uid) of the
        # objects ensured for a run, and the spec versions whose job passed a dry run.
        self._ensured: dict[tuple[str, ...], None] = {}
        self._dry_run_passed: dict[str, None] = {}
        self.events = EventCorrelator(time.monotonic)
        # The last write of each run's spares Deployment: (body digest or "deleted", when).
        self._spares: dict[tuple[str, str], tuple[str, float]] = {}

    @property
    def dyn(self) -> DynamicClient:
        """The dynamic client, made on first use (it reads the API's discovery once)."""
        with self._lock:
            if self._dyn is None:
                self._dyn = DynamicClient(self.api)
            return self._dyn

    def _res(self, kind: str) -> Any:
        """The dynamic client's resource of ``kind``, looked up once (worker threads share
        it; a kind not served yet, such as PyTorchJob before its CRD, is looked up again)."""
        dyn = self.dyn
        with self._lock:
            if kind not in self._resources:
                self._resources[kind] = dyn.resources.get(api_version=API_VERSIONS[kind], kind=kind)
            return self._resources[kind]

    def _json(self, resp: Any) -> Any:
        data: bytes = resp.data or b""
        return json.loads(data) if data else None

    # --- any request (tests use it for what the operator never asks) -----------------
    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        accept: str = "application/json",
        timeout: float | None = None,
    ) -> Any:
        resp = self.dyn.request(
            method.lower(),
            path,
            body=body,
            query_params=list((query or {}).items()),
            header_params={"Accept": accept},
            content_type=content_type,
            _request_timeout=self.timeout if timeout is None else timeout,
            serialize=False,
        )
        return self._json(resp)

    def _get(
        self, kind: str, name: str, namespace: str | None = None, accept: str = "application/json"
    ) -> Obj | None:
        try:
            resp = self.dyn.get(
                self._res(kind),
                name=name,
                namespace=namespace,
                header_params={"Accept": accept},
                _request_timeout=self.timeout,
                serialize=False,
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(self._json(resp))

    # --- reads ----------------------------------------------------------------------
    def missing(self, namespace: str, refs: Sequence[tuple[str, str]]) -> list[str]:
        """``"Kind name"`` of each referenced object that does not exist."""
        return [
            f"{kind} {name}"
            for kind, name in refs
            if self._get(kind, name, namespace, accept=METADATA_ONLY) is None
        ]

    def list_keys(
        self, kind: str, namespace: str | None, labels: str | None, fields: str | None
    ) -> list[tuple[tuple[str, str], str]]:
        """((namespace, name), UID) of every object of ``kind`` the selectors match, in
        ``namespace`` or everywhere: metadata only, in pages. [] where the API serves no
        such kind (Kueue not installed), as a watch of it would find nothing."""
        try:
            resource = self._res(kind)
        except ResourceNotFoundError:
            return []
        keys: list[tuple[tuple[str, str], str]] = []
        token: str | None = None
        while True:
            page = self._json(
                self.dyn.get(
                    resource,
                    namespace=namespace,
                    label_selector=labels,
                    field_selector=fields,
                    limit=LIST_PAGE,
                    _continue=token,
                    header_params={"Accept": METADATA_LIST},
                    _request_timeout=self.timeout,
                    serialize=False,
                )
            )
            for item in page.get("items") or []:
                meta = item["metadata"]
                key = (str(meta.get("namespace") or ""), str(meta["name"]))
                keys.append((key, str(meta["uid"])))
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return keys

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

    def _merge_patch(self, resource: Any, name: str, namespace: str, body: Obj) -> Any:
        return self.dyn.patch(
            resource,
            body=body,
            name=name,
            namespace=namespace,
            content_type=MERGE_PATCH,
            _request_timeout=self.timeout,
            serialize=False,
        )

    def _wrote(self, answer: Any) -> None:
        if self.cache is not None and isinstance(answer, dict):
            self.cache.wrote(answer)

    def create(self, obj: Mapping[str, Any], *, dry_run: bool = False) -> bool:
        """Create ``obj``; False when it already exists (deterministic names: a 409 means a
        previous reconcile, maybe of a killed operator, created it). Raises
        :class:`Refused` when the apiserver judges the object invalid (400, 422)."""
        meta = obj["metadata"]
        try:
            resp = self.dyn.create(
                self._res(str(obj["kind"])),
                body=dict(obj),
                namespace=meta["namespace"],
                dry_run="All" if dry_run else None,
                _request_timeout=self.timeout,
                serialize=False,
            )
        except ApiException as exc:
            if exc.status == 409:
                return False
            if refused(exc):
                raise Refused(str(obj["kind"]), str(meta["name"]), message_of(exc)) from None
            raise
        if not dry_run:
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

    def _delete(self, kind: str, namespace: str, name: str, **params: Any) -> None:
        try:
            resp = self.dyn.delete(
                self._res(kind),
                name=name,
                namespace=namespace,
                _request_timeout=self.timeout,
                serialize=False,
                **params,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            return
        answer = self._json(resp)
        if self.cache is None or not isinstance(answer, dict):
            return
        # A DELETE answers with the object (its last state) or, once a custom resource is
        # gone for good, a Status naming it: either way the next reconcile must not see it
        # (a second DELETE would answer 404).
        if answer.get("kind") == kind:
            self.cache.removed(answer)
        elif answer.get("kind") == "Status" and answer.get("status") == "Success":
            uid = str((answer.get("details") or {}).get("uid") or "")
            self.cache.deleted(kind, namespace, name, uid)

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
