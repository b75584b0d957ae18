"""Record watch events in the background, so tests can assert on transient states
(a DisruptionTarget condition that exists for milliseconds before the pod is deleted)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, watch


@dataclass
class Recorded:
    type: str
    obj: dict[str, Any]


@dataclass
class Recorder:
    """Watches one list function in a thread; ``events`` holds (type, object as dict)."""

    api: client.ApiClient
    list_fn: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    events: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._watch = watch.Watch()
        self._stopped = False
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Recorder:
        self._thread.start()
        self._ready.wait(10)
        return self

    def _run(self) -> None:
        initial = self.list_fn(**self.kwargs)
        if isinstance(initial, dict):  # custom objects come as plain dicts
            rv = initial["metadata"]["resourceVersion"]
        else:
            rv = initial.metadata.resource_version
        self._ready.set()
        try:
            for ev in self._watch.stream(
                self.list_fn, resource_version=rv, timeout_seconds=600, **self.kwargs
            ):
                with self._lock:
                    self.events.append(
                        Recorded(ev["type"], self.api.sanitize_for_serialization(ev["object"]))
                    )
        except Exception:
            if not self._stopped:
                raise  # a broken watch while recording must surface in the test log

    def stop(self) -> None:
        self._stopped = True
        self._watch.stop()

    def snapshot(self) -> list[Recorded]:
        with self._lock:
            return list(self.events)

    def wait_for(
        self, what: str, pred: Callable[[Recorded], bool], timeout: float = 60
    ) -> Recorded:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.snapshot():
                if pred(ev):
                    return ev
            time.sleep(0.1)  # poll interval, bounded by the deadline
        raise AssertionError(f"no watch event for {what} within {timeout}s")
