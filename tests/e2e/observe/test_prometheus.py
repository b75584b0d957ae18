"""The alert rules pass promtool's own checks.

The dashboards and the alert rules against a real Prometheus scraping the real operator pod
and the real trainer through a real spot preemption: tests/e2e/realnodes/test_real_prometheus.py
(pods on kwok nodes run no trainer that could expose its metrics or report its progress).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from observe_helpers import ALERTS_FILE

PROMTOOL = Path("/usr/bin/promtool")


def test_alert_rules_pass_promtool() -> None:
    check = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(ALERTS_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
