"""A worker that gave up waiting for its master, in either of its two words (pure).

The training operator's init container on every Worker, ``init-pytorch``, waits for the
Master's DNS name and exits 1 after its tries, 100 by default, each an nslookup and a 2 s
sleep (kubeflow/training-operator v1.9 pkg/controller.v1/pytorch/initcontainer.go
initContainerTemplate; pkg/config/config.go PyTorchInitContainerMaxTriesDefault).
spotrun's template (manifests/eks/pytorch-init-container.yaml) adds none: its workers wait
for the master themselves and leave with EXIT_NO_MASTER when it never answers
(spotrun_trainer.master_wait). ``classify`` reads either as an incomplete gang while a pod
of the gang has no node.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from spotrun_api.contract import EXIT_NO_MASTER
from spotrun_operator.judging.evidence import NOT_APP_ERRORS, containers

TRAINING_OPERATOR_INIT: Final = "init-pytorch"

Container = tuple[str, int]  # (name, exit code)


def failed_containers(pod: Mapping[str, Any]) -> list[Container]:
    """(name, exit code) of the pod's containers (init containers first) that exited with
    an application error (an exit code other than 0, 143, 86 and 87)."""
    out = []
    for cs in containers(pod):
        code = ((cs.get("state") or {}).get("terminated") or {}).get("exitCode")
        if code is not None and code not in NOT_APP_ERRORS:
            out.append((str(cs.get("name")), int(code)))
    return out


def gave_up_on_master(container: Container) -> bool:
    """``init-pytorch`` failed (its tries ran out), or a worker rank left with
    EXIT_NO_MASTER: either way the master never answered."""
    name, code = container
    return name == TRAINING_OPERATOR_INIT or code == EXIT_NO_MASTER


def describe(container: Container) -> str:
    name, code = container
    if name == TRAINING_OPERATOR_INIT:
        return f"container {name}"
    return f"container {name} (exit {code}, no master)"
