"""The working draft of one :func:`reconcile.decide` call (pure): state only.

:class:`Draft` holds a copy of the observed status that the decision edits in place, and
collects actions, events and metric events. What to do is decided elsewhere (the
transitions in :mod:`reconcile` and :mod:`transitions`, policies in :mod:`reducers`,
:mod:`children` and :mod:`finish`); the draft only records it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from spotrun_api.enums import Phase
from spotrun_api.spec import TrainingRunSpec
from spotrun_api.status import Attempt, Progress, TrainingRunStatus
from spotrun_operator.facts.common import attempt_of
from spotrun_operator.facts.config import OperatorConfig
from spotrun_operator.model import reducers
from spotrun_operator.model.plan import Action, Event, MetricEvent, Observed
from spotrun_operator.money.cost import DEFAULT_PRICES


class Draft:
    def __init__(self, obs: Observed, cfg: OperatorConfig) -> None:
        self.obs = obs
        self.cfg = cfg
        self.spec: TrainingRunSpec | None = obs.spec
        # The status being written; obs.status stays what was read (the diff's base).
        self.status: TrainingRunStatus = obs.status.model_copy(deep=True)
        self.status.attempts = sorted(self.status.attempts or [], key=lambda e: e.attempt)
        self.actions: list[Action] = []
        self.events: list[Event] = []
        self.metrics: list[MetricEvent] = []
        self.requeue_after: float = cfg.resync_seconds
        self.prices: reducers.PriceSource = obs.prices if obs.prices is not None else DEFAULT_PRICES
        self.terminal_now = False

    # --- reads ---------------------------------------------------------------------
    @property
    def now(self) -> dt.datetime:
        return self.obs.now

    @property
    def phase(self) -> Phase | None:
        return self.status.phase

    @property
    def history(self) -> list[Attempt]:
        return self.status.attempts or []

    @property
    def progress(self) -> Progress | None:
        return self.obs.status.progress

    def entry(self, n: int) -> Attempt | None:
        return reducers.get_attempt(self.history, n)

    def pods_of(self, n: int) -> list[Mapping[str, Any]]:
        return [p for p in self.obs.pods if attempt_of(p) == n]

    def deleted_pods_of(self, n: int) -> list[Mapping[str, Any]]:
        """The last state of attempt ``n``'s pods the watch saw deleted."""
        return [p for p in self.obs.deleted_pods if attempt_of(p) == n]

    # --- writes --------------------------------------------------------------------
    def update(self, n: int, **fields: Any) -> Attempt:
        """Set (or, with None, remove) fields of attempt ``n``'s history entry."""
        entry = (self.entry(n) or Attempt(attempt=n)).model_copy(update=fields)
        self.status.attempts = reducers.upsert_attempt(self.history, entry)
        return entry

    def set_condition(self, ctype: str, status: bool, reason: str, message: str) -> None:
        self.status.conditions = reducers.set_condition(
            self.status.conditions,
            ctype,
            status,
            reason,
            message,
            self.now,
            self.obs.ref.generation,
        )

    def event(self, etype: str, reason: str, message: str, key: str | None = None) -> None:
        self.events.append(Event(etype, reason, message, key))

    def metric(self, name: str, value: float = 1.0, **labels: str) -> None:
        self.metrics.append(MetricEvent(name, labels, value))

    def requeue(self, seconds: float) -> None:
        self.requeue_after = min(self.requeue_after, max(0.5, seconds))

    def say(self, message: str) -> None:
        """status.message: the summary of the latest decision."""
        self.status.message = message
