"""Test-only fault injection: the ``fault`` config section, all off by default.

End-to-end tests configure a real trainer (flags or YAML, like any other setting) to fail
in ways the operator must handle, without patching code:

- **crash**: at the step boundary where ``crash_at_step`` steps are done, in attempt
  ``crash_in_attempt`` only, raise :class:`InjectedCrash`; the CLI lets it escape, so the
  process prints a traceback and exits 1 (an application failure). The boundary comes
  before that step's save, so the step is never checkpointed by the crashing attempt, and
  a save still in flight is committed first: the next attempt resumes from a well-defined
  checkpoint and replays bit for bit.
- **slow save**: every save (periodic, final, the one on SIGTERM) sleeps
  ``slow_save_seconds`` on every rank after writing that rank's files into
  ``.tmp-step-N/`` and before reporting them, so the commit marker comes that much later
  and the gang is visibly still writing into the checkpoint folder meanwhile.
- **step delay**: every rank sleeps ``step_delay_seconds`` after each optimizer step, so a
  tiny model trains slowly enough for a test to interrupt it mid-run. No state changes.

Importable without torch (the config layer reads :class:`FaultConfig`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from spotrun_api import contract

log = logging.getLogger(__name__)


@dataclass
class FaultConfig:
    crash_at_step: int | None = None
    """TEST ONLY. Exit 1 with a traceback (an application failure) at the step boundary
    where this many steps are done, before that step is checkpointed; unset: never."""
    crash_in_attempt: int = 1
    """TEST ONLY. Attempt (SPOTRUN_ATTEMPT; 1 when unset) in which crash_at_step fires;
    0: every attempt."""
    crash_rank: int = -1
    """TEST ONLY. Global rank that crashes; -1 (default): every rank at the same boundary,
    so no rank is left waiting on a dead peer."""
    slow_save_seconds: float = 0.0
    """TEST ONLY. Every checkpoint save (the one on SIGTERM too) sleeps this long on every
    rank after writing its files and before reporting them, delaying the commit marker."""
    step_delay_seconds: float = 0.0
    """TEST ONLY. Sleep this long after every optimizer step (on every rank), so a tiny
    model trains slowly enough for an end-to-end test to interrupt it mid-run."""

    def problems(self) -> list[str]:
        """What is wrong with these values, as messages naming the field."""
        out = []
        if self.crash_at_step is not None and self.crash_at_step < 0:
            out.append("fault.crash_at_step must be >= 0")
        if self.crash_in_attempt < 0:
            out.append("fault.crash_in_attempt must be >= 0 (0: every attempt)")
        if self.crash_rank < -1:
            out.append("fault.crash_rank must be -1 (every rank) or a rank >= 0")
        if self.slow_save_seconds < 0:
            out.append("fault.slow_save_seconds must be >= 0")
        if self.step_delay_seconds < 0:
            out.append("fault.step_delay_seconds must be >= 0")
        return out


class InjectedCrash(RuntimeError):
    """The application error ``fault.crash_at_step`` raises."""


class FaultInjector:
    """Applies a :class:`FaultConfig` on one rank of one attempt."""

    def __init__(
        self,
        cfg: FaultConfig,
        rank: int,
        env: Mapping[str, str],
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cfg = cfg
        self.rank = rank
        self.attempt = contract.attempt_from_env(env) or 1
        self._sleep = sleep

    def crashes_at(self, step: int) -> bool:
        c = self.cfg
        return (
            c.crash_at_step is not None
            and step == c.crash_at_step
            and c.crash_in_attempt in (0, self.attempt)
            and c.crash_rank in (-1, self.rank)
        )

    def at_boundary(self, step: int, settle: Callable[[], object] | None = None) -> None:
        """Raise :class:`InjectedCrash` when configured for this step, attempt and rank;
        ``settle`` runs first (the loop passes "finish the save in flight")."""
        if not self.crashes_at(step):
            return
        if settle is not None:
            settle()
        log.error(
            "fault injection (test only): crashing at step %d in attempt %d on rank %d",
            step,
            self.attempt,
            self.rank,
        )
        raise InjectedCrash(
            f"injected crash at step {step} in attempt {self.attempt} (fault.crash_at_step)"
        )

    def slow_save(self, step: int) -> None:
        """Called by the checkpoint manager between a rank's files and its part file."""
        seconds = self.cfg.slow_save_seconds
        if seconds > 0:
            log.warning(
                "fault injection (test only): holding the save of step %d for %.1fs "
                "before its commit",
                step,
                seconds,
            )
            self._sleep(seconds)

    def after_step(self) -> None:
        """Called by the loop after every optimizer step."""
        if self.cfg.step_delay_seconds > 0:
            self._sleep(self.cfg.step_delay_seconds)
