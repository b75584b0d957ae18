"""A pod's log, followed while it lives: what a trainer printed before its pod went away
(a stopped attempt's pods are deleted with its PyTorchJob, and their logs with them)."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException


class LogFollower:
    """``kubectl logs -f`` of one pod in a daemon thread; :meth:`search` reads it."""

    def __init__(self, core: client.CoreV1Api, namespace: str, pod: str) -> None:
        self.core, self.namespace, self.pod = core, namespace, pod
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._follow, name=f"log-{pod}", daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        try:
            stream: Any = self.core.read_namespaced_pod_log(
                self.pod, self.namespace, follow=True, _preload_content=False
            )
        except ApiException:  # gone before the log was opened (a lost node's pod): no text
            return
        try:
            for raw in stream.stream():
                self.lines.append(raw.decode(errors="replace"))
        except Exception:  # the pod (or its node) is gone: keep what came before
            return
        finally:
            stream.release_conn()

    def search(self, pattern: re.Pattern[str], timeout: float) -> list[str]:
        """Every match of ``pattern`` in what came so far, as soon as there is one or the
        log ended (``timeout`` at most). A powered-off node's log stream may end only at
        the timeout: the line sought came long before."""
        deadline = time.monotonic() + timeout
        while True:
            found = pattern.findall("".join(self.lines))
            if found or not self.thread.is_alive() or time.monotonic() > deadline:
                return found
            self.thread.join(0.2)
