"""audit_log: requests counted by user agent in a window, and when each object the
operator created was stored, on the apiserver's clock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import audit_log
import recovery_phases as rp

T0 = 1767225600.0  # 2026-01-01T00:00:00Z


def event(agent: str, verb: str, at: str, **more: Any) -> str:
    """One audit line as the apiserver writes it (compact JSON)."""
    body = {
        "userAgent": agent,
        "verb": verb,
        "requestReceivedTimestamp": at,
        "stage": "ResponseComplete",
        **more,
    }
    return json.dumps(body, separators=(",", ":"))


def created(name: str, code: int, received: str, stored: str, agent: str) -> str:
    return event(
        agent,
        "create",
        received,
        objectRef={"resource": "pytorchjobs", "namespace": "ns", "name": name},
        responseStatus={"code": code},
        stageTimestamp=stored,
    )


OPERATOR = "spotrun-operator/0.1.0"


def test_created_at_is_the_stage_time_of_the_operators_successful_create(
    tmp_path: Path,
) -> None:
    log = tmp_path / "audit.log"
    rows = [
        created(
            "r1-a2", 201, "2026-01-01T00:00:10.100000Z", "2026-01-01T00:00:10.350000Z", OPERATOR
        ),
        # The same name again, refused: the first create stays the answer.
        created(
            "r1-a2", 409, "2026-01-01T00:00:11.000000Z", "2026-01-01T00:00:11.010000Z", OPERATOR
        ),
        # Another client's create, and one outside the window.
        created(
            "p-1", 201, "2026-01-01T00:00:12Z", "2026-01-01T00:00:12.5Z", "OpenAPI-Generator/1"
        ),
        created("r2-a2", 201, "2026-01-01T00:01:00Z", "2026-01-01T00:01:00.2Z", OPERATOR),
        event(OPERATOR, "delete", "2026-01-01T00:00:13Z", objectRef={"resource": "pytorchjobs"}),
        "not json",
    ]
    log.write_text("\n".join(rows) + "\n")
    got = audit_log.created_at(log, T0 + 5, T0 + 20, "pytorchjobs")
    assert got == {"r1-a2": T0 + 10.35}
    assert audit_log.created_at(tmp_path / "absent.log", T0, T0 + 20, "pytorchjobs") == {}


def test_requests_count_the_operators_verbs_from_an_offset(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    before = event(OPERATOR, "patch", "2026-01-01T00:00:09Z", objectRef={"resource": "pods"})
    log.write_text(before + "\n")
    start = audit_log.offset(log)
    rows = [
        event(
            OPERATOR,
            "patch",
            "2026-01-01T00:00:10Z",
            objectRef={"resource": "trainingruns", "subresource": "status"},
        ),
        event("kopf/1.37", "watch", "2026-01-01T00:00:11Z", objectRef={"resource": "pods"}),
        event("OpenAPI-Generator/1", "get", "2026-01-01T00:00:12Z", objectRef={"resource": "pods"}),
    ]
    with log.open("a") as fh:
        fh.write("\n".join(rows) + "\n")
    counts = audit_log.requests(log, T0, T0 + 20, start=start)
    assert counts == {"patch trainingruns/status": 1, "watch pods": 1}
    assert audit_log.split_reads_writes(counts) == (1, 1)


def test_phase_table_sets_the_apiservers_creation_time_beside_the_watchs() -> None:
    def rec(run: str, stored: float | None) -> rp.Recovery:
        return rp.Recovery(
            run=run, size=1, signal="nth", t_signal=10.0, t_created=14.0,
            t_created_stored=stored, t_running=20.0,
        )  # fmt: skip

    table = rp.phase_table([rec("a", 12.5), rec("b", 13.0), rec("c", None)], ["nth"])
    row = table["nth"]
    assert row["signal_to_created"]["n"] == 3 and row["signal_to_created"]["p50"] == 4.0
    # Only the recoveries whose create the audit log holds; lag = watch - apiserver.
    assert (row["signal_to_stored"]["n"], row["signal_to_stored"]["max"]) == (2, 3.0)
    assert row["watch_lag_created"]["p50"] in (1.0, 1.5) and row["watch_lag_created"]["max"] == 1.5
    assert "sig→stored" in rp.format_phase_table(table)
