"""The Kubernetes API as the CLI tools use it: TrainingRuns, their pods and pod logs, with
the user's kubeconfig (or the in-cluster service account). No operator access needed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from torchx.specs import AppState

from spotrun_api import naming
from spotrun_api.contract import GROUP, PLURAL, VERSION
from spotrun_cli import follow, runview

Obj = dict[str, Any]
CONTAINER = "pytorch"


def api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """From ``kubeconfig`` (default: $KUBECONFIG or ~/.kube/config), else in-cluster."""
    try:
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    except config.ConfigException as exc:
        if kubeconfig or context:
            raise
        try:
            config.load_incluster_config()
        except config.ConfigException:
            raise config.ConfigException(
                f"no cluster to talk to: {exc} (set KUBECONFIG or pass --kubeconfig)"
            ) from None
        return client.ApiClient()


def default_namespace(kubeconfig: str | None = None, context: str | None = None) -> str:
    """The namespace of the kubeconfig's (current) context, else ``default``."""
    try:
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
    except (config.ConfigException, FileNotFoundError):
        return "default"
    chosen = next((c for c in contexts if c["name"] == context), active) if context else active
    return str((chosen or {}).get("context", {}).get("namespace") or "default")


def api_message(exc: ApiException) -> str:
    """The apiserver's own words (its Status message, or the plain-text body)."""
    body = exc.body.decode() if isinstance(exc.body, bytes) else str(exc.body or "")
    try:
        return str(json.loads(body).get("message") or exc.reason)
    except ValueError:
        return body.strip() or str(exc.reason)


class RunAPI:
    """TrainingRuns and the pods of their attempts, as plain dicts."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def get(self, namespace: str, name: str) -> Obj | None:
        try:
            run: Obj = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return run

    def create(self, body: Obj, dry_run: bool = False) -> Obj:
        """Create; fields the CRD does not know are an error, not silently pruned."""
        extra = {"dry_run": "All"} if dry_run else {}
        created: Obj = self.custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            body["metadata"]["namespace"],
            PLURAL,
            body,
            field_validation="Strict",
            **extra,
        )
        return created

    def runs(self, namespace: str) -> list[Obj]:
        resp = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        return list(resp.get("items") or [])

    def patch(self, namespace: str, name: str, patch: Obj) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, patch)

    def delete(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def attempt_pods(self, namespace: str, run: str, attempt: int) -> list[Obj]:
        sel = f"{runview.JOB_LABEL}={naming.job_name(run, attempt)}"
        pods = self.core.list_namespaced_pod(namespace, label_selector=sel).items
        return [self.api.sanitize_for_serialization(p) for p in pods]

    def pod_phase(self, namespace: str, pod: str) -> str | None:
        try:
            p = self.core.read_namespaced_pod(pod, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return str(p.status.phase) if p.status and p.status.phase else "Pending"

    def log_lines(self, namespace: str, pod: str, stream: bool) -> Iterator[str]:
        """The container's log, line by line (newline kept); ``stream`` follows it."""
        resp = self.core.read_namespaced_pod_log(
            pod, namespace, container=CONTAINER, follow=stream, _preload_content=False
        )
        rest = b""
        try:
            for chunk in resp.stream(4096):
                rest += chunk
                *lines, rest = rest.split(b"\n")
                for line in lines:
                    yield line.decode(errors="replace") + "\n"
            if rest:
                yield rest.decode(errors="replace") + "\n"
        finally:
            resp.release_conn()


def _phase(run: Obj | None) -> str | None:
    if run and runview.app_state(run) == AppState.CANCELLED:
        return "Cancelled"
    phase = ((run or {}).get("status") or {}).get("phase")
    return None if phase is None else str(phase)


def follow_logs(
    runs: RunAPI,
    namespace: str,
    name: str,
    replica: int = 0,
    should_follow: bool = False,
    poll_seconds: float = 2.0,
    note: Callable[[str], None] | None = None,
) -> Iterator[str]:
    """Log lines of ``replica`` of the run's live attempt; with ``should_follow`` on to each
    next attempt until the run ends. ``note`` hears why it stopped, and each pod whose log
    the apiserver could not serve (``no log from pod ...``)."""
    streamed = 0
    while True:
        run = runs.get(namespace, name)
        attempt = runview.live_attempt(run) if run else 0
        pod = naming.pod_name(name, attempt, replica)
        observed = follow.Snapshot(
            exists=run is not None,
            phase=_phase(run),
            attempt=attempt,
            pod_phase=runs.pod_phase(namespace, pod) if attempt else None,
            streamed=streamed,
            follow=should_follow,
        )
        action = follow.next_action(observed)
        if isinstance(action, follow.Done):
            if note and action.note:
                note(action.note)
            return
        if isinstance(action, follow.Stream):
            if should_follow:
                yield follow.header(action.attempt, pod)
            try:
                yield from runs.log_lines(namespace, pod, action.follow)
            except ApiException as exc:
                # The node may be gone with the preemption; keep following the run.
                if note:
                    note(f"no log from pod {pod}: {api_message(exc)}")
            except urllib3.exceptions.HTTPError as exc:
                # The stream broke (a node lost with its kubelet): the next attempt follows.
                if note:
                    note(f"log of pod {pod} cut off: {exc}")
            streamed = action.attempt
            continue
        time.sleep(poll_seconds)
