"""The operator <-> trainer contract, as the trainer imports it.

Everything here is defined once in :mod:`spotrun_api` (importable without torch or kopf)
and re-exported under the names the trainer has always used.
"""

from __future__ import annotations

from spotrun_api.contract import (
    ALL_ENV,
    COMMIT_MARKER,
    DEFAULT_CHECKPOINT_INTERVAL_SECONDS,
    DEFAULT_METRICS_PORT,
    DEFAULT_TERMINATION_GRACE_SECONDS,
    ENV_ATTEMPT,
    ENV_CHECKPOINT_DIR,
    ENV_CHECKPOINT_INTERVAL_SECONDS,
    ENV_CHECKPOINT_KEEP,
    ENV_METRICS_PORT,
    ENV_NAMESPACE,
    ENV_PROCS_PER_NODE,
    ENV_RUN,
    ENV_S3_URI,
    ENV_TERMINATION_GRACE_SECONDS,
    EXIT_DONE,
    EXIT_STOPPED,
    GROUP,
    KIND,
    MIN_CHECKPOINT_INTERVAL_SECONDS,
    PLURAL,
    STEP_DIR_PREFIX,
    VERSION,
    attempt_from_env,
    parse_step_dir,
    step_dir_name,
)
from spotrun_api.status import PER_ATTEMPT_PROGRESS_FIELDS, PROGRESS_FIELDS, Progress

__all__ = [
    "ALL_ENV",
    "COMMIT_MARKER",
    "DEFAULT_CHECKPOINT_INTERVAL_SECONDS",
    "DEFAULT_METRICS_PORT",
    "DEFAULT_TERMINATION_GRACE_SECONDS",
    "ENV_ATTEMPT",
    "ENV_CHECKPOINT_DIR",
    "ENV_CHECKPOINT_INTERVAL_SECONDS",
    "ENV_CHECKPOINT_KEEP",
    "ENV_METRICS_PORT",
    "ENV_NAMESPACE",
    "ENV_PROCS_PER_NODE",
    "ENV_RUN",
    "ENV_S3_URI",
    "ENV_TERMINATION_GRACE_SECONDS",
    "EXIT_DONE",
    "EXIT_STOPPED",
    "GROUP",
    "KIND",
    "MIN_CHECKPOINT_INTERVAL_SECONDS",
    "PER_ATTEMPT_PROGRESS_FIELDS",
    "PLURAL",
    "PROGRESS_FIELDS",
    "STEP_DIR_PREFIX",
    "VERSION",
    "Progress",
    "attempt_from_env",
    "parse_step_dir",
    "step_dir_name",
]
