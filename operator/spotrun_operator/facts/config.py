"""Operator settings: timing knobs of the recovery state machine, prices, ports.

Defaults suit production; tests shorten the delays through flags or SPOTRUN_* env vars
(see :func:`from_env` and ``spotrun-operator --help``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from spotrun_api.checkpoint_interval import DEFAULT_CHECKPOINT_COST_SECONDS

# Reconcile threads. A reconcile that acts spends most of its time waiting on the apiserver
# (a job's DELETE, then its POST, the status PATCHes: 0.1-0.6 s each under a storm's load),
# with the GIL released: at 1,100 runs, 8 threads were all waiting so through a 300-node
# storm, and the runs just hit queued behind them (0.49 s on average, 14 % over 1 s; 1.8 ms
# with 32, at 8 MiB more; bench/operator_scale.py, docs/operator.md, the benchmarks).
DEFAULT_WORKERS = 32


@dataclass(frozen=True)
class OperatorConfig:
    # Backoff before attempt N+1 after repeated losses: base * factor**(k-1), capped, with
    # +-jitter. Small by default: a spot reclaim rarely repeats within seconds, and every
    # second waited is a second of GPUs idle.
    backoff_base_seconds: float = 10.0
    backoff_factor: float = 2.0
    backoff_max_seconds: float = 600.0
    backoff_jitter: float = 0.2
    # An attempt that ran this long resets the consecutive-loss count of the backoff.
    backoff_reset_seconds: float = 1800.0
    # A rebalance recommendation is advice, not a notice: by default it does not restart.
    restart_on_rebalance: bool = False
    # Instead, ask for the replacement at the recommendation and move the gang to it once
    # it is warm (decisions/rebalance.py): off by default, as EC2 Auto Scaling's Capacity
    # Rebalancing is; a recommendation not followed by a notice costs a restart and the
    # replacement's node time.
    replace_on_rebalance: bool = False
    # On a spot interruption notice (NTH's spot-itn taint), keep training, ask for the
    # replacement at once, and move the gang to it once it is warm, or stop gracefully when
    # the notice leaves no more than the stop margin (decisions/notice_ride.py). Off by
    # default: it needs the run's PodDisruptionBudget to hold NTH's drain, which also holds
    # every other voluntary eviction of the gang's pods.
    train_through_notice: bool = False
    # Seconds of the 2-minute notice kept for the graceful stop (the last step, the save,
    # the exit): the gang stops by notice + 120 s - max(this, 2 x the measured save stall).
    notice_stop_margin_seconds: float = 40.0
    # Survivors of a lost node often crash in NCCL before the node is marked NotReady; a
    # failed pod is charged to the application only once this long passed with no
    # infrastructure evidence in the gang.
    failure_settle_seconds: float = 45.0
    # A node that stopped reporting (Ready=Unknown, already 40 s of silence by default) is
    # lost only after this much more; a deleted node is lost at once.
    node_lost_grace_seconds: float = 30.0
    # Image pull errors / missing secrets may be fixed quickly (a registry hiccup, a secret
    # applied a moment later); after this long they end the run.
    config_error_grace_seconds: float = 60.0
    # Pods still terminating this long after their grace period are force-deleted.
    stop_timeout_slack_seconds: float = 30.0
    # How often an idle run is re-checked when no watch event woke it.
    resync_seconds: float = 30.0
    # Longest spacing of status writes that only refresh the cost estimate (it is also
    # rewritten with every other status change and after each committed checkpoint).
    cost_update_seconds: float = 900.0
    # Checkpoint cost assumed by checkpoint.interval=auto (Young/Daly).
    checkpoint_cost_seconds: float = DEFAULT_CHECKPOINT_COST_SECONDS
    # Attempts kept in status.attempts; older ones are folded into status.archived.
    history_limit: int = 10
    # Nodes behind a preemption within this window are disfavoured by the next attempt's
    # preferred affinity (nodes going away are avoided outright, at any age).
    avoid_nodes_seconds: float = 3600.0
    # How often a next attempt whose gang cannot be placed yet looks for capacity again (a
    # node joining wakes no run by itself).
    capacity_poll_seconds: float = 5.0
    # Images every warm spare pulls besides the run's (comma-separated; each in an init
    # container that exits at once): the training operator's init image, which each Worker
    # pod runs first (upstream's --pytorch-init-container-image default, alpine:3.10). A
    # spare that lacks it leaves the next attempt's worker pulling it on the spare's node.
    spare_pull_images: str = ""

    @property
    def pull_images(self) -> tuple[str, ...]:
        """``spare_pull_images`` as a list, blanks dropped."""
        return tuple(i.strip() for i in self.spare_pull_images.split(",") if i.strip())


def _coerce(value: str, like: object) -> object:
    if isinstance(like, bool):
        return value.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(like, int):
        return int(value)
    if isinstance(like, float):
        return float(value)
    return value


def from_env(env: Mapping[str, str] | None = None) -> OperatorConfig:
    """Defaults overridden by ``SPOTRUN_<FIELD_IN_CAPS>`` environment variables."""
    env = os.environ if env is None else env
    base = OperatorConfig()
    changes: dict[str, object] = {}
    for f in fields(OperatorConfig):
        key = f"SPOTRUN_{f.name.upper()}"
        if key in env:
            changes[f.name] = _coerce(env[key], getattr(base, f.name))
    return replace(base, **changes)  # type: ignore[arg-type]


def with_overrides(cfg: OperatorConfig, overrides: Mapping[str, object | None]) -> OperatorConfig:
    """``cfg`` with the non-None entries of ``overrides`` (CLI flags) applied."""
    names = {f.name for f in fields(OperatorConfig)}
    changes = {k: v for k, v in overrides.items() if v is not None and k in names}
    return replace(cfg, **changes)  # type: ignore[arg-type]
