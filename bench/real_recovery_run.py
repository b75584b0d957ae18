"""One case of ``real_recovery``: a 2-node run on the real nodes, one signal, observed until
the next gang's first training step (boundaries: ``real_recovery_watch``)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import threading
import time
from typing import Any

import real_recovery_cpu as cpu
import real_recovery_watch as w
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from spotrun_api import contract
from spotrun_api.spec import parse_spec
from spotrun_dev import (
    chart_install,
    cluster,
    cluster_apply,
    paths,
    real_interrupt,
    real_partition,
    real_story,
    realnodes,
    storage,
)
from spotrun_dev.provisioner import CapacitySettings, Provisioner
from spotrun_dev.waiting import wait_for
from spotrun_operator.model import builders
from spotrun_operator.model.plan import RunRef

NAMESPACE = "bench-recovery"
CRD = paths.REPO_ROOT / "crds" / "trainingruns.spotrun.dev.yaml"
RUN = "r"
JOB_LABEL = "training.kubeflow.org/job-name"
# Every step logged (the master's log dates the first step); trains until deleted.
ARGS = (
    *(
        a
        for a in real_story.TRAINER_ARGS
        if not a.startswith(("--report.log-every", "--max-steps"))
    ),
    "--report.log-every=1",
    "--max-steps=100000",
)
WARM_STEPS = 30  # trained before the signal, so a checkpoint exists
TAIL_LINES = 50  # of the old master's log, for its newest step line
ELASTIC = {"minNodes": 1, "waitBeforeShrink": "0s"}  # spotrun_elastic (growBack default)
# The bench's operator replaces a node on its rebalance recommendation (decisions/rebalance.py);
# no other signal taints a node so, so only the ``rebalance`` cases see the flag.
OPERATOR_ARGS = ("--replace-on-rebalance",)


class CaseRunner:
    def __init__(
        self, api: client.ApiClient, settings: CapacitySettings, timeout: float, lead: float
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.api, self.settings, self.timeout = api, settings, timeout
        self.lead = lead  # rebalance: the recommendation comes this long before the notice
        self.image = ""
        self.release: chart_install.Release | None = None
        self.riding = False  # the installed operator trains through spot notices
        self._ended_before: list[str] = []  # the run's attempts ended before the signal
        self._gang: dict[str, str] = {}  # the next gang's pods once bound: uid -> node

    def setup(self) -> None:
        built = realnodes.built_images()
        self.image = built["trainer"].ref
        realnodes.ensure_real_nodes(self.core, 3)
        cluster.fresh_namespace(self.core, NAMESPACE)
        storage.ensure_checkpoint_claim(self.core, NAMESPACE, "ckpt")
        cluster_apply.apply_manifests(self.api, [yaml.safe_load(CRD.read_text())])
        self._install(riding=False)

    def _install(self, riding: bool) -> None:
        """Install (or upgrade) the bench's operator, training through notices or not."""
        self.release = chart_install.install_operator(
            self.core,
            NAMESPACE,
            realnodes.built_images()["operator"].ref,
            chart_args=chart_install.TRAIN_THROUGH_NOTICE if riding else (),
            extra_args=OPERATOR_ARGS,
        )
        self.riding = riding

    def teardown(self) -> None:
        """Uninstall the bench's operator: left running, it would act on every later run
        of the cluster (the e2e tests' too) beside theirs."""
        if self.release is not None:
            chart_install.uninstall(self.release)
            self.release = None

    # --- one case -----------------------------------------------------------------------
    def run(self, signal: str, variant: str) -> tuple[w.Boundaries, int | None]:
        wanted = 3 if variant == "spotrun_spare" else 2
        realnodes.exactly_spot_nodes(self.core, wanted)  # no spare capacity without a spare
        folder = storage.host_path(NAMESPACE, "ckpt")
        for child in folder.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        kubeflow, elastic = variant == "kubeflow", variant == "spotrun_elastic"
        if not kubeflow and self.riding != (variant == "spotrun_ride"):
            self._install(riding=variant == "spotrun_ride")
        self._create(kubeflow, spare=variant == "spotrun_spare", elastic=elastic)
        try:
            if variant == "spotrun_spare":
                wait_for("the warm spare", self._spare_running, timeout=240, interval=1)
            with Provisioner(self.core, wanted, self.settings, namespace=NAMESPACE):
                b, lost = self._interrupt(signal, kubeflow, gang=1 if elastic else 2)
                if elastic and b.complete():
                    self._grow_back(b)
                return b, lost
        finally:
            self._delete(kubeflow)

    def _grow_back(self, b: w.Boundaries) -> None:
        """The shrunk gang trains: follow it until the whole gang trains again (its
        placeholder ran on the replacement), keeping the shrunk master's log while it
        lasts (its pod goes with the grow-back)."""
        shrunk = self._next_master(False)
        kept: list[str] = []
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            master = self._next_master(False)
            if master == shrunk:
                kept = self._log(shrunk) or kept
            elif master:
                b.grow_back = w.grow_back(b.signal, kept, self._log(master)) or {}
                if b.grow_back:
                    return
            time.sleep(0.5)
        b.notes.append(f"not grown back {self.timeout:.0f}s after the shrunk gang trained")

    def _interrupt(
        self, signal: str, kubeflow: bool, gang: int = 2
    ) -> tuple[w.Boundaries, int | None]:
        master = self._wait_warm(kubeflow)
        pods = self._pods(kubeflow)
        worker = next(p for p in pods if p.metadata.name != master)
        node = str(worker.spec.node_name)
        before = {p.metadata.uid: w.restarts(p) for p in pods}
        b = w.Boundaries(signal=dt.datetime.now(dt.UTC))
        self._ended_before = [] if kubeflow else self._ended()
        if self._ended_before:  # the case's gang is not attempt 1: say why
            b.notes.append(f"attempts ended before the signal: {self._ended_before}")
        last = w.log_marks(self._log(master), b.signal).last_step
        dying = threading.Thread(target=self._inject, args=(signal, node), daemon=True)
        self._gang = {}
        with cpu.Sampler() as sampler:
            dying.start()
            resumed, last = self._follow(signal, b, kubeflow, master, (before, gang, last))
        if b.bound and b.trained:
            old_nodes = {str(p.spec.node_name) for p in pods}
            b.cpu = cpu.account(sampler.samples, b.bound, b.trained, self._gang, old_nodes,
                                os.cpu_count() or 1)  # fmt: skip
        if signal == "partition" and node in realnodes.FleetState.load().nodes:
            # The cut-off instance ends (unless the group already dropped it).
            real_interrupt.instance_dies(self.core, node)
        dying.join(timeout=300)
        lost = None if resumed is None or last is None else max(0, last - resumed)
        return b, lost

    def _follow(
        self, signal: str, b: w.Boundaries, kubeflow: bool, master: str,
        seen: tuple[dict[str, int], int, int | None],
    ) -> tuple[int | None, int | None]:  # fmt: skip
        """Observe the recovery until the next gang trains (or the timeout): (the step it
        resumed from, the old gang's newest step). ``seen``: the old gang's pods' restarts
        by uid, the next gang's size, the old gang's newest step before the signal."""
        before, gang, last = seen
        deadline = time.monotonic() + self.timeout + (self.lead if signal == "rebalance" else 0)
        resumed: int | None = None
        next_master = ""
        while not b.complete() and time.monotonic() < deadline:
            if b.running is None:
                # rebalance: the old gang trains on; its newest step, until it stops (a
                # line a step: the tail holds one, a whole log read twice a second would
                # take CPU from the move on the 2 shared cores).
                trains_on = signal == "rebalance" or (self.riding and not kubeflow)
                old = w.last_step(self._log(master, TAIL_LINES)) if trains_on else None
                if old is not None:
                    b.paused, last = old
                self._observe(b, kubeflow, before, gang)
            else:
                # From here only the new master's log is read, every 2 s: its lines carry
                # the kubelet's timestamps, so the pace changes no figure, while pod lists
                # decoded every 0.5 s took CPU from the ranks' start on the 2 shared cores.
                next_master = next_master or self._next_master(kubeflow)
                lines = self._log(next_master)
                next_master = next_master if lines else ""  # gone: look it up again
                marks = w.log_marks(lines, b.signal)
                b.loaded, b.trained, resumed = marks.loaded, marks.trained, marks.resumed_step
                b.trainer_phases = w.trainer_phases(lines, b.signal)
            time.sleep(0.5 if b.running is None else 2.0)
        # The phase line follows the first step's line (core.report_step); a read between
        # the two has the step only.
        for _ in range(10):
            if not b.complete() or b.trainer_phases or not next_master:
                break
            time.sleep(0.5)
            b.trainer_phases = w.trainer_phases(self._log(next_master), b.signal)
        if not b.complete():
            b.notes.append(f"not training again {self.timeout:.0f}s after the signal")
        elif b.paused is not None and b.trained is not None:
            whole = (b.trained - b.signal).total_seconds()
            b.notes.append(f"signal -> training again {whole:.1f}s (trained on until the pause)")
        return resumed, last

    def _inject(self, signal: str, node: str) -> None:
        if signal == "rebalance":  # NTH (IMDS) on the recommendation; the notice comes later
            real_interrupt.nth_rebalance(self.core, node)
            threading.Event().wait(self.lead)
        if signal in ("nth", "rebalance"):  # NTH's own 120 s drain timeout
            real_interrupt.nth_notice(self.core, node)
        elif signal == "shutdown":
            realnodes.power_off(node)
        elif signal == "partition":
            real_partition.cut(node)
            return
        elif signal == "karpenter":  # no NTH: Karpenter drains, then ends the instance
            real_interrupt.karpenter_notice(self.core, node)
            real_interrupt.karpenter_terminates(self.core, node)
            return
        real_interrupt.instance_dies(self.core, node)

    def _observe(self, b: w.Boundaries, kubeflow: bool, before: dict[str, int], size: int
                 ) -> None:  # fmt: skip
        """``size``: pods of the next gang (1 for a shrunk one of spotrun_elastic)."""
        now = dt.datetime.now(dt.UTC)
        pods = self._pods(kubeflow)
        if b.detect is None and self._detected(kubeflow, pods, before):
            b.detect = now
        gang = [p for p in pods if w.next_gang_pod(p, before, b.signal, kubeflow)]
        if len(gang) < size:
            return
        if b.bound is None and all(p.spec.node_name for p in gang):
            b.bound = now
            self._gang = {p.metadata.uid: str(p.spec.node_name) for p in gang}
        if b.running is None and all(w.running_since(p, b.signal) for p in gang):
            b.running = now
            b.pull_s = w.pull_seconds(self._pull_events({p.metadata.name for p in gang}))

    def _detected(self, kubeflow: bool, pods: list[Any], before: dict[str, int]) -> bool:
        if not kubeflow:
            return len(self._ended()) > len(self._ended_before)
        if {p.metadata.uid for p in pods} != set(before):
            return True
        return any(
            p.metadata.deletion_timestamp or w.restarts(p) > before.get(p.metadata.uid, 0)
            or w.terminated(p)
            for p in pods
        )  # fmt: skip

    # --- the workload --------------------------------------------------------------------
    def _spec_body(self, spare: bool, heartbeat: bool, elastic: bool = False) -> dict[str, Any]:
        env = [] if heartbeat else [{"name": contract.ENV_PEER_TIMEOUT_SECONDS, "value": "0"}]
        body = real_story.trainer_run(RUN, self.image, "ckpt", ARGS, env=env)
        body["spec"]["podTemplate"]["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent"
        if spare:
            body["spec"]["capacity"] = {"warmSpares": 1}
        if elastic:  # the survivor trains at once; the whole gang again on the replacement
            body["spec"]["elasticity"] = ELASTIC
        return body

    def _create(self, kubeflow: bool, spare: bool, elastic: bool = False) -> None:
        body = self._spec_body(spare, heartbeat=not kubeflow, elastic=elastic)
        if not kubeflow:
            self.custom.create_namespaced_custom_object(
                contract.GROUP, contract.VERSION, NAMESPACE, contract.PLURAL, body
            )
            return
        for obj in kubeflow_objects(body):
            cluster_apply.apply_manifests(self.api, [obj])

    def _delete(self, kubeflow: bool) -> None:
        kind = ("kubeflow.org", "v1", "pytorchjobs", f"{RUN}-a1") if kubeflow else (
            contract.GROUP, contract.VERSION, contract.PLURAL, RUN)  # fmt: skip
        try:
            self.custom.delete_namespaced_custom_object(kind[0], kind[1], NAMESPACE, kind[2],
                                                        kind[3])  # fmt: skip
        except ApiException as exc:
            if exc.status != 404:
                raise
        wait_for("the case's pods to go", self._no_pods, timeout=240)

    def _no_pods(self) -> bool:
        pods = self.core.list_namespaced_pod(NAMESPACE).items
        for p in pods:  # pods of a gone node: no kubelet will confirm them
            if p.metadata.deletion_timestamp and real_interrupt.node_ready(
                self.core, p.spec.node_name or ""
            ) is not True:  # fmt: skip
                self.core.delete_namespaced_pod(p.metadata.name, NAMESPACE, grace_period_seconds=0)
        return not [p for p in pods if p.metadata.labels.get("spotrun.dev/run") == RUN]

    # --- reads ---------------------------------------------------------------------------
    def _wait_warm(self, kubeflow: bool) -> str:
        found: list[str] = []

        def warm() -> bool:
            master = self._next_master(kubeflow)
            marks = w.log_marks(self._log(master), dt.datetime.now(dt.UTC))
            found[:] = [master]
            return master != "" and (marks.last_step or 0) >= WARM_STEPS

        wait_for(f"{WARM_STEPS} steps of training", warm, timeout=420, interval=1)
        return found[0]

    def _spare_running(self) -> bool:
        sel = f"{_SPARE}={RUN}"
        pods = self.core.list_namespaced_pod(NAMESPACE, label_selector=sel).items
        return any(p.status.phase == "Running" for p in pods)

    def _pods(self, kubeflow: bool) -> list[Any]:
        # An attempt's pods (the placeholders of spares and capacity requests carry no
        # attempt label).
        sel = f"{JOB_LABEL}={RUN}-a1" if kubeflow else f"spotrun.dev/run={RUN},spotrun.dev/attempt"
        return list(self.core.list_namespaced_pod(NAMESPACE, label_selector=sel).items)

    def _next_master(self, kubeflow: bool) -> str:
        pods = self._pods(kubeflow)
        if not kubeflow:
            newest = max((int(p.metadata.labels["spotrun.dev/attempt"]) for p in pods), default=0)
            pods = [p for p in pods if p.metadata.labels["spotrun.dev/attempt"] == str(newest)]
        return next((p.metadata.name for p in pods if real_story.is_master(p)), "")

    def _log(self, pod: str, tail: int | None = None) -> list[str]:
        """``pod``'s log with the kubelet's timestamps (its last ``tail`` lines)."""
        if not pod:
            return []
        try:
            text = self.core.read_namespaced_pod_log(
                pod, NAMESPACE, timestamps=True, tail_lines=tail
            )
        except ApiException:
            return []  # not started yet, or gone
        return str(text).splitlines()

    def _ended(self) -> list[str]:
        """The run's attempts that have an outcome: ``N outcome reason on node: message``
        (the node and message say where an attempt ended before the signal came from)."""
        attempts = self._status().get("attempts") or []
        return [f"{a['attempt']} {a['outcome']} {a.get('reason', '')} on {a.get('node')}: "
                f"{str(a.get('message', ''))[:160]}"
                for a in attempts if a.get("outcome")]  # fmt: skip

    def _status(self) -> dict[str, Any]:
        obj = self.custom.get_namespaced_custom_object(
            contract.GROUP, contract.VERSION, NAMESPACE, contract.PLURAL, RUN
        )
        return dict(obj.get("status") or {})

    def _pull_events(self, names: set[str]) -> list[str]:
        events = self.core.list_namespaced_event(NAMESPACE).items
        return [e.message or "" for e in events
                if e.reason == "Pulled" and e.involved_object.name in names]  # fmt: skip


_SPARE = "spotrun.dev/spare-of"


def kubeflow_objects(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The PyTorchJob spotrun would create for attempt 1 of ``body`` (and the service
    account its pods name), left to the Kubeflow training operator: both replicas restart
    OnFailure and no owner is set."""
    ref = RunRef(RUN, NAMESPACE, "00000000-0000-0000-0000-000000000000")
    spec = parse_spec(body["spec"])
    job = builders.build_pytorchjob(ref, spec, attempt=1, capacity_type="spot",
                                    interval_seconds=3)  # fmt: skip
    job["metadata"].pop("ownerReferences", None)
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        replica["restartPolicy"] = "OnFailure"
    job["spec"]["runPolicy"]["backoffLimit"] = 100  # it keeps restarting, as users set it
    account = builders.build_service_account(ref)
    account["metadata"].pop("ownerReferences", None)
    return [account, job]
