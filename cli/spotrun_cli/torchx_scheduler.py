"""The TorchX scheduler ``spotrun``: ``torchx run -s spotrun dist.ddp -j 2x8 --script t.py``.

Registered through the ``torchx.schedulers`` entry point group (pyproject.toml), which
TorchX's plugin registry loads (torchx/plugins/_registry.py in meta-pytorch/torchx). The
app id is ``<namespace>:<run>`` like TorchX's Kubernetes scheduler's; the structure of
this class follows that scheduler (torchx/schedulers/kubernetes_scheduler.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException
from torchx.schedulers.api import (
    DescribeAppResponse,
    ListAppResponse,
    Scheduler,
    Stream,
    filter_regex,
)
from torchx.specs import AppDef, AppDryRunInfo, CfgVal, ReplicaStatus, RoleStatus, runopts

from spotrun_cli import kubeapi, runview, translate
from spotrun_cli.opts import SpotrunOpts

logger = logging.getLogger(__name__)


@dataclass
class SpotrunRequest:
    """What ``torchx run --dryrun -s spotrun`` prints: the TrainingRun to create."""

    resource: dict[str, Any]

    def __str__(self) -> str:
        import yaml

        return str(yaml.safe_dump(self.resource, sort_keys=False))


def load_pod_template(path: str) -> dict[str, Any]:
    import yaml

    with open(path) as f:
        doc = yaml.safe_load(f)
    if not isinstance(doc, dict):
        raise ValueError(f"pod_template {path}: expected a PodTemplateSpec mapping (spec: ...)")
    return doc


def split_app_id(app_id: str) -> tuple[str, str]:
    namespace, sep, name = app_id.partition(":")
    if not sep or not namespace or not name:
        raise ValueError(f"spotrun app ids look like <namespace>:<run>, not {app_id!r}")
    return namespace, name


class SpotrunScheduler(Scheduler[SpotrunOpts]):  # type: ignore[misc]  # torchx ships no type hints
    """Submits TorchX apps as spotrun TrainingRuns and reads them back."""

    def __init__(self, session_name: str, api: client.ApiClient | None = None) -> None:
        super().__init__("spotrun", session_name)
        self._api = api

    def _runs(self) -> kubeapi.RunAPI:
        if self._api is None:
            self._api = kubeapi.api_client()
        return kubeapi.RunAPI(self._api)

    def _run_opts(self) -> runopts:
        return SpotrunOpts.as_runopts()

    def _validate(self, app: AppDef, scheduler: str, cfg: SpotrunOpts) -> None:
        translate.only_role(app)

    def _submit_dryrun(
        self, app: AppDef, cfg: SpotrunOpts
    ) -> AppDryRunInfo[SpotrunRequest, SpotrunOpts]:
        namespace = cfg.namespace or kubeapi.default_namespace()
        opts = SpotrunOpts.from_cfg({**dict(cfg), "namespace": namespace})
        template = load_pod_template(opts.pod_template) if opts.pod_template else None
        body = translate.to_trainingrun(app, opts, translate.run_name(app.name), template)
        return AppDryRunInfo(SpotrunRequest(body), str)

    def schedule(self, dryrun_info: AppDryRunInfo[SpotrunRequest, SpotrunOpts]) -> str:
        body = dryrun_info.request.resource
        try:
            created = self._runs().create(body)
        except ApiException as exc:
            msg = kubeapi.api_message(exc)
            raise ValueError(f"the apiserver refused the TrainingRun: {msg}") from exc
        return f"{created['metadata']['namespace']}:{created['metadata']['name']}"

    def describe(self, app_id: str) -> DescribeAppResponse | None:
        namespace, name = split_app_id(app_id)
        runs = self._runs()
        run = runs.get(namespace, name)
        if run is None:
            return None
        role = translate.role_of(run)
        attempt = runview.live_attempt(run)
        pods = runs.attempt_pods(namespace, name, attempt) if attempt else []
        replicas = [
            ReplicaStatus(id=k, state=state, role=role.name, hostname=host)
            for k, state, host in runview.replicas(pods, role.num_replicas)
        ]
        st = run.get("status") or {}
        return DescribeAppResponse(
            app_id=app_id,
            state=runview.app_state(run),
            num_restarts=runview.restarts(run),
            msg=runview.message(run),
            roles=[role],
            roles_statuses=[RoleStatus(role.name, replicas)],
            metadata={
                "phase": str(st.get("phase", "")),
                "attempt": str(attempt),
                "preemptions": str(st.get("preemptions", 0)),
                "failures": str(st.get("failures", 0)),
            },
        )

    def describe_native(self, app_id: str) -> AppDryRunInfo[SpotrunRequest, SpotrunOpts] | None:
        """The TrainingRun itself, status included (what ``--dryrun`` showed, read back)."""
        namespace, name = split_app_id(app_id)
        run = self._runs().get(namespace, name)
        return None if run is None else AppDryRunInfo(SpotrunRequest(run), str)

    def list(self, cfg: Mapping[str, CfgVal] | None = None) -> list[ListAppResponse]:
        namespace = str((cfg or {}).get("namespace") or kubeapi.default_namespace())
        return [
            ListAppResponse(
                app_id=f"{namespace}:{run['metadata']['name']}",
                state=runview.app_state(run),
                name=str((run["metadata"].get("annotations") or {}).get(translate.ANN_APP, "")),
            )
            for run in self._runs().runs(namespace)
        ]

    def _cancel_existing(self, app_id: str) -> None:
        """Suspend gracefully (every rank checkpoints) and mark the run cancelled; the
        TrainingRun and its ledger stay (``torchx delete`` removes them)."""
        namespace, name = split_app_id(app_id)
        run = self._runs().get(namespace, name) or {}
        if (run.get("status") or {}).get("phase") in runview.TERMINAL_PHASES:
            return
        patch = {
            "metadata": {"annotations": {translate.ANN_CANCELLED: "true"}},
            "spec": {"suspend": True},
        }
        self._runs().patch(namespace, name, patch)

    def _delete_existing(self, app_id: str) -> None:
        namespace, name = split_app_id(app_id)
        self._runs().delete(namespace, name)

    def log_iter(
        self,
        app_id: str,
        role_name: str,
        k: int = 0,
        regex: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        should_tail: bool = False,
        streams: Stream | None = None,
    ) -> Iterable[str]:
        if streams not in (None, Stream.COMBINED):
            raise ValueError("the spotrun scheduler only supports the COMBINED log stream")
        if since is not None or until is not None:
            raise ValueError("the spotrun scheduler does not support --since/--until")
        namespace, name = split_app_id(app_id)
        lines: Iterable[str] = kubeapi.follow_logs(
            self._runs(), namespace, name, k, should_tail, note=_note
        )
        return filter_regex(regex, lines) if regex else lines


def _note(msg: str) -> None:
    logger.warning("spotrun: %s", msg)


def create_scheduler(session_name: str, **kwargs: Any) -> SpotrunScheduler:
    """The factory TorchX calls (``torchx.schedulers`` entry point ``spotrun``)."""
    return SpotrunScheduler(session_name=session_name, api=kwargs.get("client"))
