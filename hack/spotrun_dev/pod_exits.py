"""Each trainer pod of a namespace as a watch saw it: exit codes, the order of its
lifecycle events, its node and the tail of its log (kept when it ends: the log goes with
the pod). The real story's assertions and failure messages read these."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, field

from kubernetes import client, watch

log = logging.getLogger("spotrun_dev.pod_exits")


@dataclass
class PodExits:
    """Watches the namespace's pods; keeps each trainer container's last exit code."""

    core: client.CoreV1Api
    namespace: str
    codes: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # (event, run, attempt, pod) in watch order: a pod's first ADDED, the first event that
    # shows it terminal (every container exited: "ENDED") and its DELETED
    order: list[tuple[str, str, str, str]] = field(default_factory=list)
    finished: dict[tuple[str, str, str], list[dt.datetime]] = field(default_factory=dict)
    created: dict[tuple[str, str, str], dt.datetime] = field(default_factory=dict)
    # For failure messages: each pod's node, its containers' terminated states, and the
    # tail of its log read when it ended (the log goes with the pod).
    nodes: dict[tuple[str, str, str], str] = field(default_factory=dict)
    terminations: dict[tuple[str, str, str], str] = field(default_factory=dict)
    log_tails: dict[tuple[str, str, str], str] = field(default_factory=dict)
    restarts: list[str] = field(default_factory=list)  # when and why the watch broke

    def __post_init__(self) -> None:
        self._watch = watch.Watch()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> PodExits:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped = True
        self._watch.stop()

    def _run(self) -> None:
        """Watch until stopped; a watch the apiserver ends is started again (a relist
        only adds what is still there, so nothing recorded is lost)."""
        while not self._stopped:
            try:
                for ev in self._watch.stream(self.core.list_namespaced_pod, self.namespace):
                    self._record(ev["object"])
                    self._order(ev["type"], ev["object"])
            except Exception as exc:  # a broken watch stream: start a new one
                self.restarts.append(f"{dt.datetime.now(dt.UTC):%H:%M:%S} {exc!r}")
                log.warning("pod watch ended (%r); watching again", exc)
                time.sleep(0.5)

    def _order(self, kind: str, pod: client.V1Pod) -> None:
        labels = pod.metadata.labels or {}
        key = (labels.get("spotrun.dev/run", ""), labels.get("spotrun.dev/attempt", ""),
               pod.metadata.name)  # fmt: skip
        self.created.setdefault(key, pod.metadata.creation_timestamp)
        statuses = pod.status.container_statuses or []
        ended = pod.status.phase in ("Succeeded", "Failed") or (
            bool(statuses) and all(c.state and c.state.terminated for c in statuses)
        )
        events = [kind] if kind in ("ADDED", "DELETED") else []
        if pod.spec.node_name:
            self.nodes[key] = pod.spec.node_name
        if ended:
            events.append("ENDED")
            self.finished[key] = [
                c.state.terminated.finished_at for c in statuses if c.state and c.state.terminated
            ]
            self.terminations[key] = "; ".join(_terminated(c) for c in statuses)
            if key not in self.log_tails and key[0]:
                self.log_tails[key] = ""
                threading.Thread(target=self._keep_log_tail, args=(key,), daemon=True).start()
        for ev in events:
            if ev == "DELETED" or (ev, *key) not in self.order:
                self.order.append((ev, *key))

    def _record(self, pod: client.V1Pod) -> None:
        labels = pod.metadata.labels or {}
        key = (labels.get("spotrun.dev/run", ""), labels.get("spotrun.dev/attempt", ""))
        for cs in pod.status.container_statuses or []:
            if cs.state and cs.state.terminated:
                self.codes[(*key, pod.metadata.name)] = int(cs.state.terminated.exit_code)

    def _keep_log_tail(self, key: tuple[str, str, str], lines: int = 25) -> None:
        try:
            tail = self.core.read_namespaced_pod_log(key[2], self.namespace, tail_lines=lines)
        except Exception as exc:  # the pod may be gone already
            tail = f"(log not read: {exc})"
        self.log_tails[key] = str(tail)

    def of(self, run: str, attempt: int) -> list[int]:
        return sorted(c for (r, a, _), c in self.codes.items() if (r, a) == (run, str(attempt)))

    def describe(self, run: str, attempt: int) -> str:
        """Every pod of the attempt as the watch saw it: node, exit, events, log tail."""
        out = []
        for key in sorted(k for k in self.created if k[:2] == (run, str(attempt))):
            events = [ev for ev, *k in self.order if tuple(k) == key]
            out.append(
                f"pod {key[2]} on {self.nodes.get(key, '?')}: exit {self.codes.get(key)} "
                f"({self.terminations.get(key, 'not seen terminated')}); events {events}\n"
                f"{self.log_tails.get(key, '(no log read)')}"
            )
        if not out:
            out.append(f"no pod of {run} attempt {attempt} was seen")
        return "\n".join([*out, f"watch restarts: {self.restarts}"])


def _terminated(status: client.V1ContainerStatus) -> str:
    t = status.state.terminated if status.state else None
    if t is None:
        return f"{status.name}: not terminated"
    return f"{status.name}: {t.exit_code} {t.reason or ''} at {t.finished_at}"


def pods_where(core: client.CoreV1Api, namespace: str, selector: str) -> str:
    """The selected pods now: name, node, phase (and a waiting container's reason)."""
    out = []
    for p in core.list_namespaced_pod(namespace, label_selector=selector).items:
        statuses = p.status.container_statuses or []
        waiting = [c.state.waiting.reason for c in statuses if c.state and c.state.waiting]
        out.append(f"{p.metadata.name}@{p.spec.node_name} {p.status.phase}{waiting or ''}")
    return ", ".join(out) or "none"
