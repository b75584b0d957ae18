"""The API calls every writer of the operator makes, on the official ``kubernetes``
package's public dynamic client (``kubernetes.dynamic.DynamicClient``): get, list (metadata
only, in pages), create (a 409 is "already there", a 400/422 a :class:`Refused` verdict),
merge patch and delete, each with the operator's request timeout, and the answers of its
own writes fed into the watch caches. :mod:`spotrun_operator.kubeio.kube` builds the
operator's verbs on them.

Objects travel as plain JSON dicts both ways (the pure modules never see client models),
and the dynamic client sends them as they are, with the content type (merge patch) or
``Accept`` (metadata only) each call needs. The typed ``CoreV1Api`` would validate bodies
against its own models first: a pod template the user passed through would then fail in
the client with the client's words instead of the apiserver's message naming the field,
which is what ``InvalidSpec`` reports.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from spotrun_operator.kubeio.apiserver import (
    API_VERSIONS,
    MERGE_PATCH,
    METADATA_LIST,
    METADATA_ONLY,
    Refused,
    message_of,
    refused,
)
from spotrun_operator.watching.cache import Cache

Obj = dict[str, Any]

# Objects per page of a listing (client-go's reflector asks for 500).
LIST_PAGE = 500


class ApiCalls:
    def __init__(self, api: client.ApiClient, timeout: float = 30.0) -> None:
        self.api = api
        self.timeout = timeout
        self._dyn: DynamicClient | None = None
        self._lock = threading.Lock()
        self._resources: dict[str, Any] = {}
        # Watch-fed caches that the answers to the operator's own writes go into (set by
        # the runner): the next reconcile sees them before the watch event comes back.
        self.cache: Cache | None = None

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
